"""The local cluster: a VLMService deployment as real processes on 127.0.0.1.

An emulated Kubernetes API, a process runner standing in for kubelet and the ReplicaSet
controller (each pod a real gate + fake-model pair), a Service proxy, a real Prometheus and the
real operator, in a closed loop, on one machine. See :class:`LocalCluster`; the demo
(``make demo``) and the end-to-end tests are built on it, and ``python -m e2e.localcluster up``
starts one to poke at.
"""

from e2e.localcluster.cluster import LocalCluster, OperatorExited, PodSample, Snapshot
from e2e.localcluster.compress import compress_manifest, compress_spec, expand_spec, scrape_interval
from e2e.localcluster.load import PhaseReport, TraceRun, replay
from e2e.localcluster.runner import PodRun, ProcessRunner
from e2e.localcluster.service import ServiceProxy

__all__ = [
    "LocalCluster",
    "OperatorExited",
    "PhaseReport",
    "PodRun",
    "PodSample",
    "ProcessRunner",
    "ServiceProxy",
    "Snapshot",
    "TraceRun",
    "compress_manifest",
    "compress_spec",
    "expand_spec",
    "replay",
    "scrape_interval",
]
