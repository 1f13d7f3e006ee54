"""kopf handlers of the operator: decorators only, each delegating to plain functions.

The behaviour lives in :mod:`vlm_operator.reconcile`; this module only tells
kopf what to watch and what to call. Importing it registers the handlers in
kopf's default registry (``vlm-operator run`` does).
"""

from __future__ import annotations

from typing import Any

import kopf

from vlm_operator import reconcile
from vlm_operator.crd import CRD_NAME
from vlm_operator.models import GROUP, PLURAL, SERVICE_LABEL, VERSION


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    reconcile.configure_settings(settings)


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return reconcile.connection_info(memo.context.kube)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.context.signals.aclose()
    memo.context.kube.close()


@kopf.index("v1", "pods", labels={SERVICE_LABEL: kopf.PRESENT})
def vlm_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return reconcile.pod_index_entry(body)


@kopf.index("apps", "v1", "deployments", labels={SERVICE_LABEL: kopf.PRESENT})
def vlm_deployments(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return reconcile.deployment_index_entry(body)


@kopf.on.event(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", field="metadata.name", value=CRD_NAME
)
def crd_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconcile.crd_seen(memo.context, body)


@kopf.on.event("v1", "services", labels={SERVICE_LABEL: kopf.PRESENT})
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels={SERVICE_LABEL: kopf.PRESENT})
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels={SERVICE_LABEL: kopf.PRESENT})
def child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if event["type"] == "DELETED":
        reconcile.child_deleted(memo.context, body)


def watch_pod_monitors() -> None:
    """Also watch PodMonitors, on request (``run --watch-podmonitors``): kopf
    warns at every rescan about a watched resource whose CRD is missing, which
    many clusters lack."""
    kopf.on.event("monitoring.coreos.com", "v1", "podmonitors",
                  labels={SERVICE_LABEL: kopf.PRESENT})(child_event)  # fmt: skip


@kopf.on.create(GROUP, VERSION, PLURAL)
async def create(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    await reconcile.apply_spec(memo.context, body, created=True, logger=logger, retry=retry)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def update(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, **kwargs: Any
) -> None:
    await reconcile.apply_spec(
        memo.context,
        body,
        created=False,
        logger=logger,
        pods=kwargs["vlm_pods"],
        deployments=kwargs["vlm_deployments"],
        retry=retry,
    )


#: Seconds a stopped control loop (the operator's SIGTERM, the service deleted) has to
#: finish the cycle it is in before it is cancelled: a cycle that scaled and was then
#: cancelled would leave no status nor Event of the scale. A stopped loop begins no
#: scale (its reads before one may take far longer: a query's deadline each), so this
#: is for a scale begun and the status write after it, a few API requests. The chart's
#: terminationGracePeriodSeconds (30 s) covers both waits.
CYCLE_GRACE_SECONDS = 20.0
#: And then, cancelled, to be gone.
CANCELLED_GRACE_SECONDS = 5.0


@kopf.daemon(
    GROUP,
    VERSION,
    PLURAL,
    cancellation_backoff=CYCLE_GRACE_SECONDS,
    cancellation_timeout=CANCELLED_GRACE_SECONDS,
)
async def autoscale(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    # The indices arrive as kwargs named after their functions above.
    await reconcile.autoscale_forever(
        memo.context,
        body,
        stopped=stopped,
        pods=kwargs["vlm_pods"],
        deployments=kwargs["vlm_deployments"],
        logger=logger,
    )
