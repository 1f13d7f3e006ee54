"""What the operator does for a VLMService: apply its spec, and autoscale it.

Two entry points, called by the thin kopf handlers in :mod:`handlers`:

* :func:`apply_spec` (create / update / resume): validate the spec, render the
  children (:func:`vlm_operator.render.render_children`), adopt them (owner
  references, so deleting the VLMService garbage-collects them) and
  create-or-patch each one. An invalid spec becomes the ``InvalidSpec``
  condition and a Warning Event, and nothing else is touched: no exception,
  so kopf does not retry it in a loop. Unless autoscaling is off and
  ``spec.replicas`` is set, the Deployment's ``replicas`` is left out of the
  patch: a spec change rolls the pods (new template) but never resets the
  count the autoscaler (or a user, through the scale subresource) chose.

* :func:`autoscale_forever` (one kopf daemon per VLMService): every
  ``autoscaling.syncPeriodSeconds`` read the signals, ask the policy, scale the
  Deployment when the decision changes its replicas, write the status and the
  Events of what changed.

Why a daemon and not ``@kopf.timer``: a kopf timer's interval is fixed when
the handler is decorated, but each VLMService has its own sync period. A
daemon reads the period from the live body before every sleep, so a changed
period takes effect at the next tick, and it costs nothing between ticks (a
1 s base timer that skips most ticks would run a thousand handler invocations
per second at a thousand services). Ticks are aligned to multiples of the
period on the wall clock, so all services with the same period tick together
and share one batch of Prometheus queries (see :mod:`vlm_operator.signals`).

Everything the policy remembers is in ``status.autoscalerState``: a restarted
operator continues the stabilization windows where the previous one stopped.
The loop also keeps its latest state in memory and continues from it: most
cycles change nothing visible and are not written, and starting each cycle
from the last *written* state would run another policy than the one the
simulator tunes (which carries the state every tick).

The loop owns the children between spec changes too: a Deployment missing from
the watch-fed index for ``missing_grace_seconds`` (deleted by hand; a shorter
absence is the watch lagging its creation) is re-applied with the replicas the
loop last counted (or the status's, after a restart), and every
``children_refresh_seconds`` (10 minutes) all children are read and
re-applied, which recreates any missing one and reverts hand edits of the
fields the operator sets. A child that already holds what is rendered is not
written: the refresh costs one read per child, and one per optional child not
rendered (at a thousand services of four children, ten reads a second). A
child the API server rejects (400/422) is a problem of the spec: it becomes
``InvalidSpec=True`` (reason ``ChildRejected``) and a Warning Event, and is
retried with a doubling back-off rather than every few seconds; a child still
the VLMService's predecessor's (deleted and created again at once) is first
waited for, while the garbage collector deletes it. Optional
children the spec no longer asks for (PodMonitor, NetworkPolicy) are deleted.

A cycle never writes the spec's conditions (``InvalidSpec``,
``SpecWarnings``): it did not evaluate the spec, and one that started before
the spec changed would overwrite the handler's newer verdict. It carries them
as this operator wrote them last for the current generation (the watch may not
show that write yet), else as the live object shows them, and skips its write
when the generation moved. The other way round, the spec's handler carries the
cycles' conditions (``MetricsAvailable``, ``Ready``, ...) as the loop wrote them
last, not as its event showed them before it applied the children: the list is
replaced whole by every status patch.

Pods and Deployments are read from kopf indices (watch-fed, in memory), not
listed per cycle: a cycle of a steady service makes no API request at all
unless its status changes or its children's refresh is due.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import kopf

from vlm_operator.crd import CRD_NAME, SchemaDrift, schema_drift
from vlm_operator.kube import ApiError, KubeClient, NotOurs, object_path
from vlm_operator.models import API_VERSION, PLURAL, SERVICE_LABEL, VLMServiceSpec
from vlm_operator.operator_metrics import OperatorMetrics
from vlm_operator.persistence import EssenceDiffBaseStorage, EssenceProgressStorage
from vlm_operator.policy import Decision, PodCounts, PolicyState, recommend
from vlm_operator.render import DEFAULT_OPERATOR_IMAGE, render_children, selector_string
from vlm_operator.runtimes import startup_budget_seconds
from vlm_operator.signals import SignalReader
from vlm_operator.status import (
    CHILD_REJECTED,
    INVALID_SPEC,
    METRICS_AVAILABLE,
    READY,
    SPEC_CONDITION_TYPES,
    child_rejected_conditions,
    cycle_status,
    differs,
    find_condition,
    invalid_spec_conditions,
    merge_patched,
    rfc3339,
    set_condition,
    spec_warning_conditions,
    transition_events,
    with_spec_conditions,
)
from vlm_operator.validation import InvalidManifest, parse_spec, spec_warnings

#: Reason of the Warning Event and Ready condition of a Deployment applied again after
#: it was gone.
DEPLOYMENT_MISSING = "DeploymentMissing"
#: Pod annotation the ReplicaSet reads to pick which pods to delete first.
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
_DEFAULT_SYNC_PERIOD = 5.0
_LOG = logging.getLogger(__name__)


@dataclass
class OperatorContext:
    """What every handler needs, built once by ``vlm-operator run`` (kopf's memo)."""

    kube: KubeClient
    signals: SignalReader
    metrics: OperatorMetrics
    operator_image: str = DEFAULT_OPERATOR_IMAGE
    #: Write the status at least this often even when nothing visible changed.
    status_refresh_seconds: float = 30.0
    #: Re-apply the rendered children at least this often: a child deleted or
    #: edited by hand is recreated or reverted without waiting for a spec change.
    children_refresh_seconds: float = 600.0
    #: How long the Deployment must be missing from the index to be re-applied.
    missing_grace_seconds: float = 30.0
    #: First and last wait before re-applying children the API server rejected.
    rejected_backoff_seconds: tuple[float, float] = (10.0, 600.0)
    #: How long to wait for the garbage collector to delete a child still controlled by
    #: the VLMService's predecessor of the same name (deleted and created again at
    #: once) before reporting it as ChildRejected (the back-off then tries again).
    predecessor_wait_seconds: float = 15.0
    #: Specs applied at once. At start-up kopf calls every service's handler at
    #: once; rendered children waiting for the API (~70 KB per service with
    #: their request copies) would all be alive together, a peak of heap that
    #: Python keeps for the life of the process. A few at a time keep the API
    #: client's threads just as busy.
    applying: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(16))
    #: How the installed CRD differs from this operator's (None: not seen yet).
    crd_drift: SchemaDrift | None = None
    #: The running control loops' memories, by (namespace, name) of their VLMService.
    loops: dict[tuple[str, str], _Memory] = field(default_factory=dict)
    #: The spec's conditions as this operator wrote them last, with the generation they
    #: judged, by (namespace, name): until the watch shows a write, a cycle that
    #: carried the live object's would put the previous verdict back.
    spec_verdicts: dict[tuple[str, str], tuple[int | None, list[dict[str, Any]]]] = field(
        default_factory=dict
    )


@dataclass
class _Memory:
    """What one service's loop wrote last, until the watch shows it back.

    Its times (``written_at``, ``scaled_at``, ``applied_at``, ``missing_since``) are
    on the monotonic clock: a wall clock stepped back an hour would otherwise keep
    a scale the watch has long shown, and hold the refreshes, for that hour. What is
    stored (the policy's state, the status's stamps) is on the wall clock.
    """

    status: dict[str, Any] | None = None
    written_at: float = -math.inf
    scaled_to: int | None = None
    scaled_at: float = -math.inf
    #: The spec's generation when this loop scaled: a scale the spec's handler
    #: made since (autoscaling turned off, ``replicas`` set) is not this loop's.
    scaled_generation: int | None = None
    #: When this loop last scaled, while no status write has told it
    #: (``lastScaleTime``): a write that failed after the scale would lose it.
    unwritten_scale_time: str | None = None
    #: The Deployment's replicas as the last cycle counted or set them: a
    #: Deployment deleted by hand is created again with as many, not at
    #: minReplicas, which would leave the load on a fleet too small until its
    #: new pods report it.
    replicas: int | None = None
    #: The policy's state after this loop's last cycle, written to the status or
    #: not: most cycles change nothing visible and are not written, but the
    #: policy's windows and means advanced all the same (the simulator that
    #: tunes the policy carries the state every tick).
    state: PolicyState | None = None
    #: When this loop last applied the children, and how long to wait after a
    #: rejection (0 when the last apply went through).
    applied_at: float | None = None
    backoff: float = 0.0
    #: Since when the Deployment has been missing from the index.
    missing_since: float | None = None
    #: A Service or PodDisruptionBudget of this VLMService was seen deleted.
    child_lost: bool = False
    #: kopf's live view of the object, which the loop's daemon is given (a spec
    #: handler's body is the snapshot of one event).
    live: Mapping[str, Any] | None = None


# ------------------------------------------------------------------- the spec


def validate_spec(raw: Any) -> tuple[VLMServiceSpec | None, str | None]:
    """The parsed spec, or None and every problem as ``spec.field: reason``."""
    try:
        return parse_spec(raw), None
    except InvalidManifest as exc:
        return None, "; ".join(str(error) for error in exc.errors)


def replicas_from_spec(spec: VLMServiceSpec) -> bool:
    """Whether the spec sets the Deployment's replicas on every apply.

    Only with autoscaling off and ``spec.replicas`` set. With autoscaling on the
    autoscaler owns the count; with it off and no ``spec.replicas`` the count is
    kept as it is (what the policy's "kept N" says), not reset to the rendered
    count of a new Deployment.
    """
    return not spec.autoscaling.enabled and spec.replicas is not None


def _generation(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("generation")
    return int(value) if value is not None else None


#: kopf's indices of the pods and Deployments of every VLMService, by (namespace, name).
Index = Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]


async def apply_spec(
    context: OperatorContext,
    body: kopf.Body,
    *,
    created: bool,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    pods: Index | None = None,
    deployments: Index | None = None,
    retry: int = 0,
) -> None:
    """Create or patch the children of a VLMService to match its spec.

    With the indices, a scale-down the spec makes (autoscaling off, ``replicas``
    lowered) marks the pods by their load first, as the autoscaler's own do: the
    ReplicaSet would otherwise rank them by the marks of an earlier scale-down.

    ``retry`` is kopf's count of this handler's earlier failures: a write RBAC
    refuses (the operator's Role lacks a verb or resource) fails until someone
    grants it, so it is tried again after a doubling wait (``rejected_backoff_seconds``),
    not every 5 s as a passing failure (the API server restarting) is.
    """
    async with context.applying:
        try:
            await _apply_spec(
                context, body, created=created, logger=logger, pods=pods, deployments=deployments
            )
        except kopf.TemporaryError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ApiError) and cause.lacks_permission):
                raise
            first, longest = context.rejected_backoff_seconds
            wait = min(longest, first * 2 ** min(retry, 32))
            raise kopf.TemporaryError(
                f"{exc} (forbidden: again in {wait:.0f}s)", delay=wait
            ) from cause


async def _apply_spec(
    context: OperatorContext,
    body: kopf.Body,
    *,
    created: bool,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    pods: Index | None,
    deployments: Index | None,
) -> None:
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    generation = _generation(body)
    previous = dict(body.get("status") or {})
    stamp = rfc3339(time.time())
    spec, error = validate_spec(body.get("spec"))
    if spec is None:
        conditions = invalid_spec_conditions(
            previous.get("conditions") or [], error, now=stamp, generation=generation
        )
        conditions = with_spec_conditions(
            _cycle_conditions(context.loops.get((namespace, name)), previous), conditions
        )
        await context.kube.patch_status(
            API_VERSION,
            PLURAL,
            namespace,
            name,
            {"conditions": conditions, "observedGeneration": generation},
        )
        _remember_verdict(context, (namespace, name), generation, conditions)
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(error))
        logger.warning("invalid spec, children left alone: %s", error)
        return

    if pods is not None and deployments is not None and replicas_from_spec(spec):
        key = (namespace, name)
        current = next(iter(deployments.get(key, ())), None)
        if current is not None and (spec.replicas or 0) < int(current.get("replicas") or 0):
            stale_after = spec.autoscaling.missing_signals.stale_after_seconds
            max_age = signal_max_age(time.time(), spec.autoscaling.sync_period_seconds, stale_after)
            load = await context.signals.pod_load(namespace, name, spec, max_age=max_age)
            await _set_deletion_costs(context, namespace, list(pods.get(key, ())), load)
    rejected = await apply_children(context, body, spec, created=created, logger=logger)
    conditions = previous.get("conditions") or []
    if rejected is not None:
        conditions = child_rejected_conditions(
            conditions, rejected, now=stamp, generation=generation
        )
        kopf.event(body, type="Warning", reason=CHILD_REJECTED, message=rejected)
        logger.warning("child rejected by the API server: %s", rejected)
    else:
        conditions = invalid_spec_conditions(conditions, None, now=stamp, generation=generation)
    warnings = [str(w) for w in spec_warnings(spec)]
    conditions = spec_warning_conditions(conditions, warnings, now=stamp, generation=generation)
    if warnings:
        kopf.event(body, type="Warning", reason="SpecWarning", message="; ".join(warnings))
    status: dict[str, Any] = {"observedGeneration": generation, "selector": selector_string(name)}
    if conditions != (previous.get("conditions") or []):
        # The list is replaced whole: with the cycles' conditions as they are now,
        # not as this handler's event showed them before the children were applied.
        status["conditions"] = conditions = with_spec_conditions(
            _cycle_conditions(context.loops.get((namespace, name)), previous), conditions
        )
    await context.kube.patch_status(API_VERSION, PLURAL, namespace, name, status)
    _remember_verdict(context, (namespace, name), generation, conditions)


def _cycle_conditions(
    memory: _Memory | None, seen: Mapping[str, Any]
) -> Sequence[Mapping[str, Any]]:
    """The latest conditions the service's cycles wrote (those the spec's are set into).

    Only the loop writes them (one operator instance writes a service's status):
    what it wrote last while the watch has not shown it yet, else its live view of
    the object, else the status ``seen`` (no loop runs).
    """
    if memory is not None:
        if memory.status is not None and "conditions" in memory.status:
            written: Sequence[Mapping[str, Any]] = memory.status["conditions"]
            return written
        if memory.live is not None:
            seen = memory.live.get("status") or {}
    conditions: Sequence[Mapping[str, Any]] = seen.get("conditions") or []
    return conditions


def _remember_verdict(
    context: OperatorContext,
    key: tuple[str, str],
    generation: int | None,
    conditions: Sequence[Mapping[str, Any]],
) -> None:
    kept = [dict(c) for c in conditions if c.get("type") in SPEC_CONDITION_TYPES]
    context.spec_verdicts[key] = (generation, kept)


def _spec_verdict(
    context: OperatorContext,
    key: tuple[str, str],
    body: Mapping[str, Any],
    generation: int | None,
) -> Sequence[Mapping[str, Any]]:
    """The spec's conditions for a cycle to carry: this operator's last verdict on this
    generation if it has one (the watch may not show it yet), else the live object's."""
    remembered = context.spec_verdicts.get(key)
    if remembered is not None and remembered[0] == generation:
        return remembered[1]
    conditions: Sequence[Mapping[str, Any]] = (body.get("status") or {}).get("conditions") or []
    return conditions


def _rejection(kind: str, name: str, exc: ApiError) -> str:
    """``Kind name: field: message`` from the API server's Status answer."""
    try:
        answer = json.loads(exc.body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return f"{kind} {name}: HTTP {exc.status} {exc.reason}: {exc.body[:300]}"
    causes = [
        f"{c.get('field')}: {c.get('message')}" if c.get("field") else str(c.get("message"))
        for c in (answer.get("details") or {}).get("causes") or []
        if isinstance(c, dict)
    ]
    detail = "; ".join(causes) or str(answer.get("message") or exc.reason)
    return f"{kind} {name} rejected (HTTP {exc.status}): {detail}"


async def apply_children(
    context: OperatorContext,
    body: kopf.Body,
    spec: VLMServiceSpec,
    *,
    created: bool,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    replicas: int | None = None,
) -> str | None:
    """Create-or-patch every rendered child; the API's rejection of one, or None.

    ``replicas``, if given, is the count a Deployment that is created starts
    with (the rendering's is ``minReplicas``); an existing one's count is the
    autoscaler's and never patched, unless the spec sets it.

    A child the API server rejects (400/422: the spec renders something it
    refuses; or 403 from admission: a webhook, a policy, a quota) is a problem of
    the spec, not of the moment: it is returned for
    the caller to report, and the other children are still applied. So is
    an object of a child's name that is another's (:class:`NotOurs`: another
    app's Service, say), which is left as it is. Other errors (the API server
    unreachable, 5xx) are retried by kopf.
    """
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    children = render_children(name, namespace, spec, operator_image=context.operator_image)
    kopf.append_owner_reference(children, owner=body)
    if replicas is not None and not replicas_from_spec(spec):
        for child in children:
            if child["kind"] == "Deployment":
                child["spec"]["replicas"] = replicas
    rejected: list[str] = []
    # One wait for the predecessor's children, all of which its deletion collects.
    until = asyncio.get_running_loop().time() + context.predecessor_wait_seconds
    for child in children:
        omit: tuple[tuple[str, ...], ...] = ()
        if child["kind"] == "Deployment" and not replicas_from_spec(spec):
            omit = (("spec", "replicas"),)
        try:
            await _apply_child(context, child, omit=omit, created=created, until=until)
        except NotOurs as exc:
            rejected.append(str(exc))
            continue
        except ApiError as exc:
            if child["kind"] == "PodMonitor" and exc.status == 404:
                # The Prometheus Operator's CRD is not installed: nothing to attach to.
                logger.warning("PodMonitor not created (is the Prometheus Operator installed?)")
                continue
            if exc.status in (400, 422) or exc.refused_by_policy:
                rejected.append(_rejection(str(child["kind"]), name, exc))
                continue
            raise kopf.TemporaryError(f"{child['kind']} {name}: {exc}", delay=5) from exc
    rendered = {str(child["kind"]) for child in children}
    uid = str(meta.get("uid") or "")
    for api_version, kind in OPTIONAL_CHILDREN:
        if kind not in rendered and not created:  # a new service has none to delete
            await _delete_owned(context, api_version, kind, namespace, name, owner_uid=uid)
    return "; ".join(rejected) or None


#: How often a child still the predecessor's is looked at again.
_PREDECESSOR_POLL_SECONDS = 0.5


async def _apply_child(
    context: OperatorContext,
    child: dict[str, Any],
    *,
    omit: tuple[tuple[str, ...], ...],
    created: bool,
    until: float,
) -> None:
    """Apply one child, waiting until ``until`` (loop time) for the predecessor's to go.

    ``kubectl delete`` and ``kubectl apply`` in a row make a VLMService of the
    same name while the garbage collector has yet to delete the old one's
    children: a wait of seconds, not a conflict to report (its Warning would
    tell the user to delete what is being deleted). Past ``until``
    (``predecessor_wait_seconds`` after the first child was applied) it is
    reported as any other's object. A handler waits in its slot of
    ``applying``, as its rendered children are alive meanwhile: with a
    collector that takes a second, services made again by the dozen hold the
    others back that long.
    """
    loop = asyncio.get_running_loop()
    create_first = created
    while True:
        try:
            await context.kube.apply(child, omit=omit, create_first=create_first)
            return
        except NotOurs as exc:
            left = until - loop.time()
            if not exc.predecessor or left <= 0:
                raise
            await asyncio.sleep(min(_PREDECESSOR_POLL_SECONDS, left))
        create_first = False  # it exists: read it first


#: Children rendered only when the spec asks for them: deleted when it stops asking.
OPTIONAL_CHILDREN = (
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


async def _delete_owned(
    context: OperatorContext,
    api_version: str,
    kind: str,
    namespace: str,
    name: str,
    *,
    owner_uid: str,
) -> None:
    """Delete the child ``kind``/``name`` if this VLMService owns it (a user's is left)."""
    path = object_path(
        {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
        }
    )
    try:
        found = await context.kube.get(path)
    except ApiError as exc:
        raise kopf.TemporaryError(f"{kind} {name}: {exc}", delay=5) from exc
    if found is None:
        return  # not there (or its CRD is not installed)
    refs = (found.get("metadata") or {}).get("ownerReferences") or []
    if not any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs):
        return
    try:
        await context.kube.delete(path, uid=(found.get("metadata") or {}).get("uid"))
    except ApiError as exc:
        raise kopf.TemporaryError(f"{kind} {name}: {exc}", delay=5) from exc


# ---------------------------------------------------------------- pod counts


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_index_entry(body: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """A pod of a VLMService as the autoscaler needs it (kopf index value)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    service = (meta.get("labels") or {}).get(SERVICE_LABEL)
    if not service:
        return {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    scheduled = conditions.get("PodScheduled")
    unscheduled = status.get("phase", "Pending") == "Pending" and (
        (scheduled is not None and scheduled.get("status") == "False")
        or not (body.get("spec") or {}).get("nodeName")
    )
    created = _timestamp(meta.get("creationTimestamp"))
    pending_since = _timestamp((scheduled or {}).get("lastTransitionTime")) or created
    # Since when the pod has not been ready: its model still loading, or failing
    # (a crash loop, an image that does not pull) after it was placed.
    unready_since = _timestamp((conditions.get("Ready") or {}).get("lastTransitionTime")) or created
    entry = {
        "name": meta.get("name"),
        "ready": ready,
        "terminating": meta.get("deletionTimestamp") is not None,
        # Failed (evicted, say) or Succeeded: an object until pod GC, no pod of the fleet.
        "finished": status.get("phase") in ("Failed", "Succeeded"),
        "unscheduled": unscheduled,
        "pendingSince": pending_since,
        "unreadySince": unready_since,
        "deletionCost": (meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION),
    }
    return {(str(meta.get("namespace") or "default"), str(service)): entry}


def scraped_by_now(pods: Iterable[Mapping[str, Any]], *, now: float, within: float) -> list[str]:
    """The pods that serve (ready, not terminating) and have for ``within`` seconds:
    Prometheus has had time to scrape them, so their gauges must have series."""
    return [
        str(pod["name"])
        for pod in pods
        if pod.get("name")
        and pod.get("ready")
        and not pod.get("terminating")
        and now - float(pod.get("unreadySince") or now) >= within
    ]


def deployment_index_entry(body: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """A VLMService's Deployment as the autoscaler needs it (kopf index value)."""
    meta = body.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_LABEL)
    if not service or service != meta.get("name"):
        return {}
    spec_replicas = (body.get("spec") or {}).get("replicas")
    entry = {
        "replicas": 1 if spec_replicas is None else int(spec_replicas),
        "readyReplicas": int((body.get("status") or {}).get("readyReplicas") or 0),
    }
    return {(str(meta.get("namespace") or "default"), str(service)): entry}


def pod_counts(
    deployment: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    *,
    now: float,
    pending_timeout_seconds: float,
    startup_budget_seconds: float = 0.0,
) -> PodCounts:
    """The policy's view of the pods: Deployment counts plus pods on their way.

    A pod not ready after ``pending_timeout_seconds`` is no longer on its way:
    without a node it is stuck; on a node, once the model's start-up budget
    (its startup probe's, when longer) has passed too, it is unready (a crash
    loop, an image that does not pull, a model that never loads). Counted as
    coming, either would hold back every scale-up but a burst's for as long as
    it lasts. A pod that has finished (an evicted one, Failed) is none of these.
    """
    unready_after = max(pending_timeout_seconds, startup_budget_seconds)
    starting = stuck = unready = 0
    for pod in pods:
        if pod.get("terminating") or pod.get("finished") or pod.get("ready"):
            continue
        starting += 1
        if pod.get("unscheduled"):
            since = pod.get("pendingSince")
            if since is not None and now - since > pending_timeout_seconds:
                stuck += 1
            continue
        since = pod.get("unreadySince")
        if since is not None and now - since > unready_after:
            unready += 1
    return PodCounts(
        current=int(deployment.get("replicas") or 0),
        ready=int(deployment.get("readyReplicas") or 0),
        starting=starting,
        stuck=stuck,
        unready=unready,
    )


# ------------------------------------------------------------------ the loop


def _sync_period(raw_spec: Any) -> float:
    try:
        period = float(raw_spec["autoscaling"]["syncPeriodSeconds"])
    except (KeyError, TypeError, ValueError):
        return _DEFAULT_SYNC_PERIOD
    return period if period >= 1.0 else _DEFAULT_SYNC_PERIOD


def until_next_tick(now: float, period: float) -> float:
    """Seconds until the next multiple of ``period`` on the wall clock."""
    return period - (now % period)


def signal_max_age(now: float, period: float, stale_after: float) -> float:
    """How old a cached answer may be for the cycle of the tick ``now`` belongs to.

    Half a period, or as late as this loop woke after its tick (plus a margin):
    when a thousand loops wake on the same tick, the last ones can start seconds
    late behind the others' work, and must still share the tick's one batch of
    queries instead of sending their own. Never more than half the service's
    ``staleAfterSeconds``: the cache is shared by services of other periods,
    and an answer reused past it would read as stale signals.
    """
    phase = now % period
    if phase > period - 0.05:  # woke a hair before the tick: it is this tick
        phase -= period
    return min(max(period / 2, phase + 0.5), stale_after / 2)


async def autoscale_forever(
    context: OperatorContext,
    body: kopf.Body,
    *,
    stopped: kopf.DaemonStopped,
    pods: Index,
    deployments: Index,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """The control loop of one VLMService, until kopf stops it (deletion or exit).

    ``body`` is kopf's live view of the object (updated by every watch event);
    ``pods`` and ``deployments`` are the kopf indices.
    """
    memory = _Memory(live=body)
    meta = body["metadata"]
    key = (str(meta.get("namespace") or "default"), str(meta["name"]))
    context.loops[key] = memory
    context.metrics.services.inc()
    try:
        while not stopped:
            await stopped.wait(until_next_tick(time.time(), _sync_period(body.get("spec"))))
            if stopped:
                break
            started = time.perf_counter()
            try:
                await autoscale_once(
                    context,
                    body,
                    memory,
                    pods=list(pods.get(key, ())),
                    deployment=next(iter(deployments.get(key, ())), None),
                    now=time.time(),
                    clock=time.monotonic(),
                    stopping=lambda: bool(stopped),
                )
            except (ApiError, OSError) as exc:
                # The API server hiccupped; the next tick retries from the live state.
                logger.warning("autoscaling cycle failed: %s", exc)
            except Exception:
                logger.exception("autoscaling cycle failed")
            finally:
                context.metrics.cycle_seconds.observe(time.perf_counter() - started)
    finally:
        if context.loops.get(key) is memory:
            del context.loops[key]
            context.spec_verdicts.pop(key, None)
            context.metrics.forget_service(*key)
        context.metrics.services.dec()


def crd_seen(context: OperatorContext, body: Mapping[str, Any]) -> None:
    """Say, once per change, how the installed VLMService CRD differs from this operator's.

    ``helm upgrade`` never updates a chart's CRDs: an operator upgraded that way
    runs against the old schema, and the API server silently drops every field
    the old schema lacks from the VLMServices (and from the statuses the
    operator writes). Logged as a warning naming the fields (the operator's
    log, not an Event: the CRD has no namespace to post one in), and exported as
    ``vlm_operator_crd_drift_fields``.
    """
    drift = schema_drift(body)
    if drift == context.crd_drift:
        return
    context.crd_drift = drift
    context.metrics.crd_drift.labels("missing").set(len(drift.missing))
    context.metrics.crd_drift.labels("unknown").set(len(drift.unknown))
    context.metrics.crd_drift.labels("changed").set(len(drift.changed))
    if drift.missing:
        _LOG.warning(
            "the installed VLMService CRD is older than this operator: it lacks %s, which the "
            "API server drops from every VLMService and status; apply this release's "
            "crds/vlmservice.yaml (kubectl apply --server-side -f ...; helm upgrade leaves "
            "CRDs as they were)",
            _some(drift.missing),
        )
    if drift.unknown:
        _LOG.warning(
            "the installed VLMService CRD is newer than this operator: %s are accepted by the "
            "API server and ignored here; upgrade the operator",
            _some(drift.unknown),
        )
    if drift.changed:
        # With fields unknown here too, the CRD is newer: the operator is what is old.
        remedy = (
            "upgrade the operator"
            if drift.unknown
            else "apply this release's crds/vlmservice.yaml (kubectl apply --server-side -f ...)"
        )
        _LOG.warning(
            "the installed VLMService CRD differs from this operator's in %s: the API server "
            "types, defaults and bounds VLMServices by it, not as this operator expects; %s",
            _some(drift.changed),
            remedy,
        )
    if not drift.missing and not drift.unknown and not drift.changed:
        _LOG.info("the installed VLMService CRD matches this operator's")


def _some(fields: tuple[str, ...], shown: int = 5) -> str:
    more = f" and {len(fields) - shown} more" if len(fields) > shown else ""
    return ", ".join(fields[:shown]) + more


def child_deleted(context: OperatorContext, body: Mapping[str, Any]) -> None:
    """A Service, PodDisruptionBudget, NetworkPolicy or (watched) PodMonitor of a
    VLMService is gone: its loop re-applies the children at its next cycle, not at the
    next refresh (10 minutes).

    The Deployment needs no such word: the loop sees it in the index every cycle. A
    NetworkPolicy deleted by hand would leave the gates open to every namespace until
    then; a PodMonitor, the gates unscraped, and the autoscaler holding replicas on
    signals gone stale. The operator's own deletion (the spec no longer asks for one)
    costs one re-apply, which writes nothing. PodMonitors are watched only with
    ``run --watch-podmonitors`` (the chart's ``watchPodMonitors``): their CRD is the
    Prometheus Operator's, which many clusters do not have, and kopf warns at every
    rescan about a watched resource that does not exist.
    """
    meta = body.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(SERVICE_LABEL)
    memory = context.loops.get((str(meta.get("namespace") or "default"), str(owner)))
    if owner and memory is not None:
        memory.child_lost = True


async def autoscale_once(
    context: OperatorContext,
    body: kopf.Body,
    memory: _Memory,
    *,
    pods: list[Mapping[str, Any]],
    deployment: Mapping[str, Any] | None,
    now: float,
    clock: float | None = None,
    stopping: Callable[[], bool] | None = None,
) -> Decision | None:
    """One cycle: signals → policy → replicas, status, Events. Returns the decision.

    ``now`` is the wall clock (the policy's state and the status's stamps are
    stored, and compared with the pods' timestamps); ``clock`` the monotonic one
    the loop's own timers run on (``now`` when not given). Once ``stopping()``
    (the operator stops, or the service goes), no scale is begun: the reads
    before it may take long, and the loop is cancelled after a grace that a
    scale begun must have to be written to the status.
    """
    clock = now if clock is None else clock
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    generation = _generation(body)
    # Parsed every cycle (~20-70 µs) rather than kept between cycles: a parsed
    # spec weighs ~7 KB per service.
    spec, _ = validate_spec(body.get("spec"))
    if spec is None:
        # apply_spec reports an invalid spec.
        memory.status = None
        return None
    await _refresh_children(
        context,
        body,
        spec,
        memory,
        generation=generation,
        missing=deployment is None,
        now=now,
        clock=clock,
    )
    if deployment is None:
        # Recreated above (or being created): its pods are not there to count yet.
        memory.status = None
        return None
    period = spec.autoscaling.sync_period_seconds
    pending_timeout = spec.autoscaling.pending_timeout_seconds
    counts = pod_counts(
        deployment,
        pods,
        now=now,
        pending_timeout_seconds=pending_timeout,
        startup_budget_seconds=startup_budget_seconds(spec),
    )
    if (
        memory.scaled_to is not None
        and counts.current != memory.scaled_to
        and clock - memory.scaled_at < 3 * period
        and memory.scaled_generation == generation
    ):
        # Our own scale is not in the watch yet: do not decide it again. (Not after a
        # spec change: the spec's handler may have set the count since.)
        counts = replace(counts, current=memory.scaled_to)

    stale_after = spec.autoscaling.missing_signals.stale_after_seconds
    max_age = signal_max_age(now, period, stale_after)
    # The pods that exist: series of others (deleted while Prometheus was down) are not load.
    names = {str(pod["name"]) for pod in pods if pod.get("name")}
    signals = await context.signals.read(namespace, name, spec, max_age=max_age, pods=names)
    unscraped = None
    if signals.error is None:
        unscraped = await context.signals.unscraped_pods(
            namespace,
            name,
            spec,
            max_age=max_age,
            pods=names,
            ready=scraped_by_now(pods, now=now, within=stale_after),
        )
        # The series of pods the index does not show are dropped as deleted pods'; with
        # the index behind the Deployment's count (its watch lagging), some were live.
        unseen = int(deployment.get("readyReplicas") or 0) - sum(
            1 for pod in pods if pod.get("ready")
        )
        if unscraped is not None and unseen > 0:
            load = await context.signals.pod_load(namespace, name, spec, max_age=max_age)
            if load is None:
                unscraped = None
            elif names & load.keys() and any(pod not in names for pod in load):
                unscraped += unseen

    previous = _previous_status(body, memory, now=clock, period=period)
    if memory.unwritten_scale_time is not None:
        previous["lastScaleTime"] = memory.unwritten_scale_time
    previous["conditions"] = with_spec_conditions(
        previous.get("conditions") or [],
        _spec_verdict(context, (namespace, name), body, generation),
    )
    state = _latest_state(memory.state, previous.get("autoscalerState"))
    decision = recommend(state, signals, counts, spec, now)
    partial = signals.error is None and (
        unscraped or unscraped is None or signals.partial is not None
    )
    if decision.direction != "up" and partial and spec.autoscaling.enabled:
        # Unknown (the ``up == 0`` query failed) is "maybe unscraped", not 0:
        # a pod missing from the sums would read as less load. Such sums are
        # signals in part, as the policy treats a missing part: no scale-down
        # (the state of a hold, not of the step it wanted), and a tick that
        # does not count as a trusted one (a long stretch of them, like an
        # outage, has the window seen again). (Signals that failed outright
        # are the policy's to report.) maxReplicas still bounds the fleet: a
        # lowered cap is the user's, not the load's. (With autoscaling off the
        # replicas are the user's too, whatever the signals.)
        if signals.partial is not None:
            why = f"Prometheus answered in part ({signals.partial})"
        elif unscraped is None:
            why = "whether every pod is scraped is unknown"
        else:
            why = f"{unscraped} pod(s) not scraped or not yet seen, their load is unknown"
        bound = spec.autoscaling.max_replicas
        replicas = min(counts.current, max(decision.replicas, bound))
        kept = state if decision.direction == "down" else decision.state
        decision = replace(
            decision,
            replicas=replicas,
            direction="down" if replicas < counts.current else "hold",
            reason=(
                f"{why}: not scaling down"
                + (f" but to maxReplicas={bound}" if replicas < counts.current else "")
                + f" (policy: {decision.reason})"
            ),
            state=replace(kept, trusted=state.trusted),
        )

    if _generation(body) != generation:
        # The spec changed while this cycle waited on Prometheus: the decision is the
        # old spec's (a maxReplicas since lowered, autoscaling since turned off, whose
        # replicas the spec's handler has set). The next cycle decides on the new one.
        return None
    scaled = False
    scale_error: str | None = None
    if decision.replicas != counts.current:
        if stopping is not None and stopping():
            return None  # the next operator decides, from where things stand then
        if decision.direction == "down":
            load = await context.signals.pod_load(namespace, name, spec, max_age=max_age)
            await _set_deletion_costs(context, namespace, pods, load)
            if _generation(body) != generation:
                return None  # the spec changed while the pods were marked: as above
        try:
            await context.kube.scale(namespace, name, decision.replicas)
        except ApiError as exc:
            # Refused (a webhook, a quota, RBAC) or unanswered: the status says so and
            # the next cycle tries again. Left to the loop, the cycle would be lost
            # whole, and the status would go on showing the last good one.
            scale_error = f"scaling {counts.current} → {decision.replicas} failed: " + _rejection(
                "Deployment", name, exc
            )
            decision = replace(decision, state=state)
        else:
            memory.scaled_to, memory.scaled_at = decision.replicas, clock
            memory.scaled_generation = generation
            scaled = True
    # Kept once the scale is made: a cycle that failed before it decides again from
    # where it stood, rather than from a change that never happened.
    memory.state = decision.state
    memory.replicas = decision.replicas if scaled else counts.current
    # A scale the API server refused is no move made.
    context.metrics.decisions.labels("failed" if scale_error else decision.direction).inc()

    new = cycle_status(
        previous,
        decision=decision,
        signals=signals,
        pods=counts,
        replicas=decision.replicas if scaled else counts.current,
        scaled=scaled,
        unscraped=unscraped,
        pending_timeout_seconds=pending_timeout,
        generation=generation,
        now=now,
        scale_error=scale_error,
    )
    if scaled:
        memory.unwritten_scale_time = new["lastScaleTime"]
    metrics_available = find_condition(new["conditions"], METRICS_AVAILABLE) or {}
    context.metrics.observe_service(
        namespace,
        name,
        desired=decision.replicas,
        max_replicas=spec.autoscaling.max_replicas,
        p95_target=spec.autoscaling.p95_latency_target_seconds,
        signals_available=metrics_available.get("status") == "True",
    )
    # (The spec's conditions, set below, raise no Events: their handler's do.)
    events = transition_events(
        previous, new, decision=decision, before=counts.current, scaled=scaled
    )
    if _generation(body) != generation:
        # The spec changed while this cycle scaled: its handler reports on the new
        # spec, and the next cycle on its autoscaling; the scale made is still told.
        for event in events:
            if event.reason in ("ScaledUp", "ScaledDown"):
                kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        return decision
    # The spec's conditions as the spec's handler wrote them last, not as the
    # cycle found them when it started.
    new["conditions"] = with_spec_conditions(
        new["conditions"], _spec_verdict(context, (namespace, name), body, generation)
    )
    if (
        differs(previous, new)
        or memory.unwritten_scale_time is not None
        or clock - memory.written_at >= context.status_refresh_seconds
    ):
        try:
            await context.kube.patch_status(API_VERSION, PLURAL, namespace, name, new)
        except BaseException:
            # The scale is made whatever the status: it is told now, as no later cycle
            # knows of it (the others come again with the next cycle's status).
            for event in events:
                if event.reason in ("ScaledUp", "ScaledDown"):
                    kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            raise
        # What the store now holds: the patch's nulls deleted their keys.
        memory.status = merge_patched(previous, new)
        memory.written_at = clock
        memory.unwritten_scale_time = None
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    return decision


async def _refresh_children(
    context: OperatorContext,
    body: kopf.Body,
    spec: VLMServiceSpec,
    memory: _Memory,
    *,
    generation: int | None,
    missing: bool,
    now: float,
    clock: float,
) -> None:
    """Re-apply the children when the Deployment is missing, a Service or PDB was seen
    deleted (:func:`child_deleted`), or the refresh is due.

    ``spec`` is that of ``generation``. A refresh that a spec change overtook (its
    handler applied the new spec while this applied the old one, whose writes may
    have landed last) is made again at the next cycle, with the new spec.

    kopf calls :func:`apply_spec` only on spec changes (and at start-up): a
    child deleted by hand would never come back, and a hand edit would stay
    until the next spec change. The merge patch of the rendering reverts
    edits of every field the operator sets (``replicas`` left out unless the
    spec sets it) and recreates a missing child. After the API server rejected
    a child, the next attempt waits, doubling, instead of hammering it.
    """
    # A Deployment missing from the index may just not be shown yet: the
    # watch lags its creation by seconds at a thousand services, and a
    # re-apply on that lag only adds to it. Missing for the grace, it is gone.
    if not missing:
        memory.missing_since = None
    else:
        if memory.missing_since is None:
            memory.missing_since = clock
        if clock - memory.missing_since < context.missing_grace_seconds:
            return
    lost = memory.child_lost
    if memory.applied_at is not None:
        if missing:
            wait = context.missing_grace_seconds
        else:
            wait = 0.0 if lost else context.children_refresh_seconds
        if clock - memory.applied_at < (memory.backoff or wait):
            return
    elif not missing and not lost:
        # The loop just started, right after apply_spec ran: wait one interval.
        memory.applied_at = clock
        return
    memory.applied_at = clock
    memory.child_lost = False  # a deletion seen from here on asks again
    try:
        rejected = await apply_children(
            context,
            body,
            spec,
            created=missing,
            logger=_LOG,
            replicas=_replicas_to_restore(body, spec, memory) if missing else None,
        )
    except BaseException as exc:
        memory.child_lost |= lost  # not re-applied: the next cycle tries again
        if not isinstance(exc, kopf.TemporaryError):
            raise
        _LOG.warning("re-applying the children failed: %s", exc)
        return
    first, longest = context.rejected_backoff_seconds
    memory.backoff = min(longest, max(first, 2 * memory.backoff)) if rejected else 0.0
    live = dict(body.get("status") or {})
    conditions = live.get("conditions") or []
    invalid = find_condition(conditions, INVALID_SPEC) or {}
    if _generation(body) != generation:
        # A newer spec: its handler reports on it, and the next cycle applies it again
        # in case this one's writes of the old landed after the handler's.
        memory.child_lost = True
        return
    stamp = rfc3339(now)
    # The Deployment gone (deleted by hand): applied again, and said so. Until its pods
    # are counted, the status must not go on saying the last cycle's pods are ready.
    recreated = missing and rejected is None
    if recreated:
        gone = clock - (memory.missing_since if memory.missing_since is not None else clock)
        kopf.event(
            body,
            type="Warning",
            reason=DEPLOYMENT_MISSING,
            message=f"the Deployment was not seen for {gone:.0f} s: applied again",
        )
    if rejected is not None and (
        invalid.get("status") != "True" or invalid.get("message") != rejected
    ):
        conditions = child_rejected_conditions(
            conditions, rejected, now=stamp, generation=generation
        )
        kopf.event(body, type="Warning", reason=CHILD_REJECTED, message=rejected)
    elif rejected is None and invalid.get("reason") == CHILD_REJECTED:
        conditions = invalid_spec_conditions(conditions, None, now=stamp, generation=generation)
    elif not recreated:
        return
    meta = body["metadata"]
    key = (str(meta.get("namespace") or "default"), str(meta["name"]))
    # The last cycle's conditions, which the watch may not show yet.
    conditions = with_spec_conditions(_cycle_conditions(memory, live), conditions)
    if recreated:
        conditions = set_condition(
            conditions,
            READY,
            "False",
            DEPLOYMENT_MISSING,
            "the Deployment was gone and is applied again; its pods start",
            now=stamp,
            generation=generation,
        )
    await context.kube.patch_status(API_VERSION, PLURAL, *key, {"conditions": conditions})
    _remember_verdict(context, key, generation, conditions)


def _replicas_to_restore(body: kopf.Body, spec: VLMServiceSpec, memory: _Memory) -> int | None:
    """The count a Deployment deleted by hand comes back with: the last one this loop
    counted or set, else the status's (a restarted operator), within the bounds;
    None (the rendering's) when autoscaling is off or no count is known."""
    if not spec.autoscaling.enabled:
        return None
    count: Any = memory.replicas
    if count is None:
        count = (body.get("status") or {}).get("replicas")
    if not isinstance(count, int) or isinstance(count, bool):
        return None
    return max(spec.autoscaling.min_replicas, min(count, spec.autoscaling.max_replicas))


def _latest_state(kept: PolicyState | None, stored: Any) -> PolicyState:
    """The policy state to continue from: this loop's own, else the status's.

    The status is parsed only when the loop has no state yet (it just
    started: a restart continues from the status). One operator instance
    writes a service's status (the chart runs one replica, Recreate), so its
    own state is never older than the stored one, and a thousand services
    need not parse their stored states every cycle.
    """
    if kept is not None:
        return kept
    return PolicyState.from_dict(stored or {})


def _previous_status(
    body: Mapping[str, Any], memory: _Memory, *, now: float, period: float
) -> dict[str, Any]:
    """The live status, or what this loop wrote last if the watch has not shown it yet."""
    live = dict(body.get("status") or {})
    if memory.status is None or now - memory.written_at > 3 * period:
        return live
    if live.get("lastDecision") == memory.status.get("lastDecision") and live.get(
        "autoscalerState"
    ) == memory.status.get("autoscalerState"):
        # The watch caught up (and may carry others' fields too): the copy is no
        # longer needed, and a thousand of them would weigh megabytes.
        memory.status = None
        return live
    return {**live, **memory.status}


async def _set_deletion_costs(
    context: OperatorContext,
    namespace: str,
    pods: list[Mapping[str, Any]],
    load: dict[str, float] | None,
) -> None:
    """Mark idle pods cheap to delete, so the ReplicaSet removes them first.

    With the load unknown the costs an earlier scale-down left are removed: they
    rank the pods by a load long gone, and the busiest pod now may be the one
    marked cheapest then. Best effort: a pod whose mark is refused (a webhook, a
    transient 5xx) is logged and the scale-down goes on, as a lowered
    maxReplicas must, ranked by what the other marks say.
    """
    patches = []
    for pod in pods:
        if pod.get("terminating") or pod.get("finished") or not pod.get("name"):
            continue
        # Requests in flight or queued: deleting a busy pod makes them wait for a drain.
        cost = None if load is None else str(round(load.get(str(pod["name"]), 0.0) * 100))
        if pod.get("deletionCost") != cost:
            patches.append(
                context.kube.annotate(
                    "v1", "pods", namespace, str(pod["name"]), {DELETION_COST_ANNOTATION: cost}
                )
            )
    results = await asyncio.gather(*patches, return_exceptions=True)
    for result in results:
        if isinstance(result, ApiError) and result.status != 404:
            _LOG.warning("a pod's deletion cost was not written: %s", result)
        elif isinstance(result, BaseException) and not isinstance(result, ApiError):
            raise result


def connection_info(kube: KubeClient) -> kopf.ConnectionInfo:
    """kopf's credentials, from the same configuration as the operator's own client.

    One source of credentials for both clients; and kopf's default login would
    re-read the kubeconfig from where the ``kubernetes`` package looked when it
    was first imported, not from ``--kubeconfig``.
    """
    config = kube.configuration
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings of the operator: own prefixes, explicit timeouts, quiet logs."""
    settings.persistence.finalizer = "vlm-operator.io/finalizer"
    # kopf's annotation storages, minus the deep copies of each event's body.
    settings.persistence.progress_storage = EssenceProgressStorage(prefix="vlm-operator.io")
    settings.persistence.diffbase_storage = EssenceDiffBaseStorage(
        prefix="vlm-operator.io", key="last-handled-configuration"
    )
    # A watch the server ends every few minutes, a client that gives up a bit
    # later, and requests that never hang: a dead API server is noticed in seconds.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.posting.reporting_component = "vlm-operator"
    # Only the operator's own Events (kopf.event) and warnings reach the API.
    settings.posting.level = logging.WARNING
    # Server-side filtering: only the pods and children of VLMServices are watched.
    settings.watching.label_selectors["v1", "pods"] = SERVICE_LABEL
    settings.watching.label_selectors["apps", "v1", "deployments"] = SERVICE_LABEL
    settings.watching.label_selectors["v1", "services"] = SERVICE_LABEL
    settings.watching.label_selectors["policy", "v1", "poddisruptionbudgets"] = SERVICE_LABEL
    settings.watching.label_selectors["networking.k8s.io", "v1", "networkpolicies"] = SERVICE_LABEL
    # The VLMService CRD only (compared with the operator's own): not every CRD in the
    # cluster, some of which weigh megabytes. kopf finds the VLMService resource through it.
    settings.watching.field_selectors["apiextensions.k8s.io", "v1", "customresourcedefinitions"] = (
        f"metadata.name={CRD_NAME}"
    )
    # kopf keeps a worker per object, holding the object's last raw body, for
    # this long after its last event. Every cycle that scales writes every
    # Deployment and VLMService: with kopf's 5 s (one sync period) a thousand
    # services kept ~2,000 workers and bodies alive through the whole cycle.
    settings.queueing.idle_timeout = 1.0
