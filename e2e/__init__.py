"""End-to-end test infrastructure: an emulated Kubernetes API, a real Prometheus, exporters.

Everything here runs as real processes or real HTTP servers on 127.0.0.1 so that the operator,
kopf and the official Kubernetes client are exercised unchanged, without a cluster.
"""
