"""What the operator does for a VLMService: apply its spec, and autoscale it.

Two entry points, called by the thin kopf handlers in :mod:`handlers`:

* :func:`apply_spec` (create / update / resume): validate the spec, render the
  children (:func:`vlm_operator.render.render_children`), adopt them (owner
  references, so deleting the VLMService garbage-collects them) and
  create-or-patch each one. An invalid spec becomes the ``InvalidSpec``
  condition and a Warning Event, and nothing else is touched: no exception,
  so kopf does not retry it in a loop. When autoscaling is on, the
  Deployment's ``replicas`` is left out of the patch: a spec change rolls the
  pods (new template) but never resets the count the autoscaler chose.

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

Pods and Deployments are read from kopf indices (watch-fed, in memory), not
listed per cycle: a cycle of a steady service makes no API request at all
unless its status changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import kopf

from vlm_operator.kube import ApiError, KubeClient
from vlm_operator.models import API_VERSION, PLURAL, SERVICE_LABEL, VLMServiceSpec
from vlm_operator.operator_metrics import OperatorMetrics
from vlm_operator.policy import Decision, PodCounts, PolicyState, recommend
from vlm_operator.render import DEFAULT_OPERATOR_IMAGE, render_children, selector_string
from vlm_operator.signals import SignalReader
from vlm_operator.status import (
    INVALID_SPEC,
    cycle_status,
    differs,
    find_condition,
    invalid_spec_conditions,
    rfc3339,
    transition_events,
)
from vlm_operator.validation import InvalidManifest, parse_spec

#: Pod annotation the ReplicaSet reads to pick which pods to delete first.
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
_DEFAULT_SYNC_PERIOD = 5.0


@dataclass
class OperatorContext:
    """What every handler needs, built once by ``vlm-operator run`` (kopf's memo)."""

    kube: KubeClient
    signals: SignalReader
    metrics: OperatorMetrics
    operator_image: str = DEFAULT_OPERATOR_IMAGE
    #: Write the status at least this often even when nothing visible changed.
    status_refresh_seconds: float = 30.0
    #: Specs applied at once. At start-up kopf calls every service's handler at
    #: once; rendered children waiting for the API (~70 KB per service with
    #: their request copies) would all be alive together, a peak of heap that
    #: Python keeps for the life of the process. A few at a time keep the API
    #: client's threads just as busy.
    applying: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(16))


@dataclass
class _Memory:
    """What one service's loop wrote last, until the watch shows it back."""

    status: dict[str, Any] | None = None
    written_at: float = 0.0
    scaled_to: int | None = None
    scaled_at: float = 0.0


# ------------------------------------------------------------------- the spec


def validate_spec(raw: Any) -> tuple[VLMServiceSpec | None, str | None]:
    """The parsed spec, or None and every problem as ``spec.field: reason``."""
    try:
        return parse_spec(raw), None
    except InvalidManifest as exc:
        return None, "; ".join(str(error) for error in exc.errors)


def _generation(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("generation")
    return int(value) if value is not None else None


async def apply_spec(
    context: OperatorContext,
    body: kopf.Body,
    *,
    created: bool,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Create or patch the children of a VLMService to match its spec."""
    async with context.applying:
        await _apply_spec(context, body, created=created, logger=logger)


async def _apply_spec(
    context: OperatorContext,
    body: kopf.Body,
    *,
    created: bool,
    logger: logging.Logger | logging.LoggerAdapter[Any],
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
        await context.kube.patch_status(
            API_VERSION,
            PLURAL,
            namespace,
            name,
            {"conditions": conditions, "observedGeneration": generation},
        )
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(error))
        logger.warning("invalid spec, children left alone: %s", error)
        return

    children = render_children(name, namespace, spec, operator_image=context.operator_image)
    kopf.append_owner_reference(children, owner=body)
    for child in children:
        omit: tuple[tuple[str, ...], ...] = ()
        if child["kind"] == "Deployment" and spec.autoscaling.enabled:
            omit = (("spec", "replicas"),)
        try:
            await context.kube.apply(child, omit=omit, create_first=created)
        except ApiError as exc:
            if child["kind"] == "PodMonitor" and exc.status == 404:
                # The Prometheus Operator's CRD is not installed: nothing to attach to.
                logger.warning("PodMonitor not created (is the Prometheus Operator installed?)")
                continue
            raise kopf.TemporaryError(f"{child['kind']} {name}: {exc}", delay=5) from exc

    status: dict[str, Any] = {"observedGeneration": generation, "selector": selector_string(name)}
    invalid = find_condition(previous.get("conditions") or [], INVALID_SPEC)
    if invalid is None or invalid.get("status") != "False":
        status["conditions"] = invalid_spec_conditions(
            previous.get("conditions") or [], None, now=stamp, generation=generation
        )
    await context.kube.patch_status(API_VERSION, PLURAL, namespace, name, status)


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
    pending_since = _timestamp((scheduled or {}).get("lastTransitionTime")) or _timestamp(
        meta.get("creationTimestamp")
    )
    entry = {
        "name": meta.get("name"),
        "ready": ready,
        "terminating": meta.get("deletionTimestamp") is not None,
        "unscheduled": unscheduled,
        "pendingSince": pending_since,
        "deletionCost": (meta.get("annotations") or {}).get(DELETION_COST_ANNOTATION),
    }
    return {(str(meta.get("namespace") or "default"), str(service)): entry}


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
) -> PodCounts:
    """The policy's view of the pods: Deployment counts plus pods on their way."""
    starting = stuck = 0
    for pod in pods:
        if pod.get("terminating") or pod.get("ready"):
            continue
        starting += 1
        since = pod.get("pendingSince")
        if pod.get("unscheduled") and since is not None and now - since > pending_timeout_seconds:
            stuck += 1
    return PodCounts(
        current=int(deployment.get("replicas") or 0),
        ready=int(deployment.get("readyReplicas") or 0),
        starting=starting,
        stuck=stuck,
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


def signal_max_age(now: float, period: float) -> float:
    """How old a cached answer may be for the cycle of the tick ``now`` belongs to.

    Half a period, or as late as this loop woke after its tick (plus a margin):
    when a thousand loops wake on the same tick, the last ones can start seconds
    late behind the others' work, and must still share the tick's one batch of
    queries instead of sending their own.
    """
    phase = now % period
    if phase > period - 0.05:  # woke a hair before the tick: it is this tick
        phase -= period
    return max(period / 2, phase + 0.5)


async def autoscale_forever(
    context: OperatorContext,
    body: kopf.Body,
    *,
    stopped: kopf.DaemonStopped,
    pods: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    deployments: Mapping[tuple[str, str], Iterable[Mapping[str, Any]]],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """The control loop of one VLMService, until kopf stops it (deletion or exit).

    ``body`` is kopf's live view of the object (updated by every watch event);
    ``pods`` and ``deployments`` are the kopf indices.
    """
    memory = _Memory()
    context.metrics.services.inc()
    try:
        while not stopped:
            await stopped.wait(until_next_tick(time.time(), _sync_period(body.get("spec"))))
            if stopped:
                break
            meta = body["metadata"]
            key = (str(meta.get("namespace") or "default"), str(meta["name"]))
            started = time.perf_counter()
            try:
                await autoscale_once(
                    context,
                    body,
                    memory,
                    pods=list(pods.get(key, ())),
                    deployment=next(iter(deployments.get(key, ())), None),
                    now=time.time(),
                )
            except (ApiError, OSError) as exc:
                # The API server hiccupped; the next tick retries from the live state.
                logger.warning("autoscaling cycle failed: %s", exc)
            except Exception:
                logger.exception("autoscaling cycle failed")
            finally:
                context.metrics.cycle_seconds.observe(time.perf_counter() - started)
    finally:
        context.metrics.services.dec()


async def autoscale_once(
    context: OperatorContext,
    body: kopf.Body,
    memory: _Memory,
    *,
    pods: list[Mapping[str, Any]],
    deployment: Mapping[str, Any] | None,
    now: float,
) -> Decision | None:
    """One cycle: signals → policy → replicas, status, Events. Returns the decision."""
    meta = body["metadata"]
    name, namespace = str(meta["name"]), str(meta.get("namespace") or "default")
    generation = _generation(body)
    # Parsed every cycle (~20-70 µs) rather than kept between cycles: a parsed
    # spec weighs ~7 KB per service.
    spec, _ = validate_spec(body.get("spec"))
    if spec is None or deployment is None:
        # apply_spec reports an invalid spec; a missing Deployment is being created.
        memory.status = None
        return None
    period = spec.autoscaling.sync_period_seconds
    pending_timeout = spec.autoscaling.pending_timeout_seconds
    counts = pod_counts(deployment, pods, now=now, pending_timeout_seconds=pending_timeout)
    if (
        memory.scaled_to is not None
        and counts.current != memory.scaled_to
        and now - memory.scaled_at < 3 * period
    ):
        # Our own scale is not in the watch yet: do not decide it again.
        counts = replace(counts, current=memory.scaled_to)

    max_age = signal_max_age(now, period)
    signals = await context.signals.read(namespace, name, spec, max_age=max_age)
    unscraped = None
    if signals.error is None:
        unscraped = await context.signals.unscraped_pods(namespace, name, spec, max_age=max_age)

    previous = _previous_status(body, memory, now=now, period=period)
    state = PolicyState.from_dict(previous.get("autoscalerState") or {})
    decision = recommend(state, signals, counts, spec, now)
    if decision.direction == "down" and unscraped:
        decision = replace(
            decision,
            replicas=counts.current,
            direction="hold",
            reason=f"{unscraped} pod(s) not scraped, their load is unknown: not scaling down "
            f"(policy: {decision.reason})",
            state=state,
        )

    scaled = False
    if decision.replicas != counts.current:
        if decision.direction == "down":
            load = await context.signals.pod_load(namespace, name, spec, max_age=max_age)
            await _set_deletion_costs(context, namespace, pods, load)
        await context.kube.scale(namespace, name, decision.replicas)
        memory.scaled_to, memory.scaled_at = decision.replicas, now
        scaled = True
    context.metrics.decisions.labels(decision.direction).inc()

    new = cycle_status(
        previous,
        decision=decision,
        signals=signals,
        pods=counts,
        replicas=decision.replicas if scaled else counts.current,
        scaled=scaled,
        unscraped=unscraped,
        pending_timeout_seconds=pending_timeout,
        spec_error=None,
        generation=generation,
        now=now,
    )
    events = transition_events(
        previous, new, decision=decision, before=counts.current, scaled=scaled
    )
    if differs(previous, new) or now - memory.written_at >= context.status_refresh_seconds:
        await context.kube.patch_status(API_VERSION, PLURAL, namespace, name, new)
        memory.status = {**previous, **new}
        memory.written_at = now
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    return decision


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
    """Mark idle pods cheap to delete, so the ReplicaSet removes them first."""
    if load is None:
        return
    patches = []
    for pod in pods:
        if pod.get("terminating") or not pod.get("name"):
            continue
        # Requests in flight or queued: deleting a busy pod makes them wait for a drain.
        cost = str(round(load.get(str(pod["name"]), 0.0) * 100))
        if pod.get("deletionCost") != cost:
            patches.append(
                context.kube.annotate(
                    "v1", "pods", namespace, str(pod["name"]), {DELETION_COST_ANNOTATION: cost}
                )
            )
    results = await asyncio.gather(*patches, return_exceptions=True)
    for result in results:
        if isinstance(result, ApiError) and result.status != 404:
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
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="vlm-operator.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
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
    # Server-side filtering: only pods and Deployments of VLMServices are watched.
    settings.watching.label_selectors["v1", "pods"] = SERVICE_LABEL
    settings.watching.label_selectors["apps", "v1", "deployments"] = SERVICE_LABEL
    # kopf keeps a worker per object, holding the object's last raw body, for
    # this long after its last event. Every cycle that scales writes every
    # Deployment and VLMService: with kopf's 5 s (one sync period) a thousand
    # services kept ~2,000 workers and bodies alive through the whole cycle.
    settings.queueing.idle_timeout = 1.0
