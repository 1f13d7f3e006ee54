"""The Helm chart rendered offline, and the end-to-end suite for a real cluster.

:mod:`e2e.cluster.chart` renders ``charts/vlm-operator`` with the real Helm
library (no ``helm`` binary, no cluster) for the chart tests, for
``manifests/install.yaml`` (``make install-manifest``) and for installing on a
real cluster when no ``helm`` command is at hand. ``test_real_cluster.py`` runs
the operator on a real cluster; it is skipped unless one is configured.
"""
