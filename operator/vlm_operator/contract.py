"""The signals contract between the gate and the operator, as plain names.

The gate exports these series; the operator's queries, the simulator and the
test exporters read them. They live here, in a module that imports nothing
but ``math``, so that pure modules (the simulator) can share them with the
gate (which needs prometheus_client) and no copy can drift. docs/design.md
describes the contract; this module is its single source in code. So is the
gate's retry advice to clients, which the simulator models.
"""

from __future__ import annotations

import math

#: Gauges: requests holding a slot now, and requests queued in the gate now.
RUNNING = "vlm_requests_running"
WAITING = "vlm_requests_waiting"
#: Histograms (seconds): arrival to last byte delivered, and time queued.
DURATION = "vlm_request_duration_seconds"
QUEUE_TIME = "vlm_request_queue_seconds"
#: Counters (exported with a ``_total`` suffix): finished requests by ``code``,
#: refusals by ``reason``, and answers from the response cache.
REQUESTS = "vlm_requests"
REJECTED = "vlm_requests_rejected"
CACHE_HITS = "vlm_cache_hits"
#: Configuration gauges.
MAX_IN_FLIGHT = "vlm_gate_max_in_flight"
QUEUE_CAPACITY = "vlm_gate_queue_capacity"

#: Label of :data:`REQUESTS`: the HTTP status as a string.
CODE_LABEL = "code"
#: Label of :data:`REJECTED`.
REASON_LABEL = "reason"

#: The rejection reason of what the gate could not read as a request at all (malformed
#: framing, a head too large, a protocol upgrade or transfer coding it does not speak).
#: Counted only there, never in :data:`REQUESTS`: a WebSocket attempt or TLS sent to the
#: plain port is neither traffic nor a server error.
MALFORMED = "malformed"

#: Why the gate answered a request itself instead of passing it on.
REJECTION_REASONS: tuple[str, ...] = (
    "queue_full",
    "deadline",
    "draining",
    "too_large",
    "not_ready",
    MALFORMED,
)

#: Buckets of :data:`DURATION` and :data:`QUEUE_TIME`, in seconds. Dense around
#: the multi-second range and the decision thresholds; the default client_python
#: buckets stop at 10 s and would put most model traffic in +Inf.
DURATION_BUCKETS: tuple[float, ...] = (
    0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 18, 20, 25, 30, 40, 60, 90, 120, 300,
)  # fmt: skip


def scaled_buckets(scale: float) -> tuple[float, ...]:
    """The duration buckets divided by ``scale``, for a model whose time runs ``scale`` x faster.

    A time-compressed test run observes compressed durations; dividing the
    bounds keeps every observation in the bucket its uncompressed duration
    would land in, so ``histogram_quantile`` × ``scale`` reads the true P95.
    """
    if not 0 < scale < float("inf"):
        raise ValueError(f"bucket scale must be a positive number, got {scale}")
    return DURATION_BUCKETS if scale == 1 else tuple(b / scale for b in DURATION_BUCKETS)


#: Weight of the newest slot-holding time in the gate's moving mean.
SERVICE_EWMA_WEIGHT = 0.2


def moving_service_mean(previous: float | None, seconds: float) -> float:
    """The gate's exponentially weighted mean of slot-holding times, with one more."""
    return seconds if previous is None else previous + SERVICE_EWMA_WEIGHT * (seconds - previous)


#: Weight of the newest arrival in the gate's moving fraction of refused arrivals
#: (about the last five arrivals).
REFUSED_EWMA_WEIGHT = 0.2
#: The longest ``Retry-After`` the gate advises: the longest that openai-python
#: (and clients built like it) honour; a longer one they replace with a back-off
#: of a few seconds of their own.
RETRY_AFTER_MAX_SECONDS = 60
#: The overload factor is counted up to this fraction of arrivals refused.
_MAX_REFUSED_FRACTION = 0.95
#: The advice errs long by this factor. A refused client is served only if a
#: place is free when it comes back; under an overload that is only once more
#: capacity is ready, which the gate cannot see (a model pod loads for a
#: minute), and a client that comes back early is refused again and has one
#: retry fewer. The estimate is the mean; half as long again lands most
#: returns after it.
RETRY_AFTER_MARGIN = 1.5


#: The request header in which openai-python, anthropic-sdk-python and the other
#: Stainless-built clients say how many times they have retried this request.
RETRY_COUNT_HEADER = "x-stainless-retry-count"
#: Retries after which a request is on its last chance: those clients retry
#: twice by default, so a refusal now is a failure, not a later retry.
LAST_CHANCE_RETRIES = 2
#: Places beyond the queue bound that requests on their last chance may take,
#: as a fraction of the queue's size (rounded up).
LAST_CHANCE_RESERVE = 0.25


def last_chance_places(queue_size: int) -> int:
    """Places a queue of ``queue_size`` keeps beyond its bound for last-chance requests.

    Under an overload that new pods will end (they load for a minute), the
    queues fill with requests refused before and coming back; a client refused
    on its last retry has failed, one refused on its first is told when to come
    back. A request on its last chance waits ahead of the others and may
    take one of these places when the queue is full: a quarter of the queue,
    at least one unless the queue has no places at all. The queue stays bounded
    and the queue deadline still applies.
    """
    return math.ceil(queue_size * LAST_CHANCE_RESERVE) if queue_size > 0 else 0


def moving_refused_fraction(previous: float, refused: bool) -> float:
    """The gate's exponentially weighted fraction of arrivals refused, with one more.

    Under 1 % it is 0: an overload long past does not stretch the advice.
    """
    fraction = previous + REFUSED_EWMA_WEIGHT * ((1.0 if refused else 0.0) - previous)
    return fraction if fraction >= 0.01 else 0.0


def retry_after_seconds(
    service_mean: float | None,
    position: int,
    slots: int,
    refused_fraction: float = 0.0,
    *,
    busy_seconds: float = 0.0,
) -> int:
    """The ``Retry-After`` of a 429 or 504: when ``position`` in the queue would be served.

    Mean slot-holding time × queue position ÷ slots, times the overload
    1 / (1 - refused fraction) and :data:`RETRY_AFTER_MARGIN`, in whole
    seconds, at least 1 and at most :data:`RETRY_AFTER_MAX_SECONDS`. Before
    anything was served (no mean), ``busy_seconds``, how long the slots have
    been held without an answer, stands for the mean: a lower bound of the
    first requests' service times. A new pod's queue fills within seconds of
    its first requests; advised 1 s, a client spends its retries before any
    request is answered (a cold start at 10 requests/s failed 277 requests in
    the simulator, 33 so advised). When a fraction f of the arrivals finds
    the queue full, 1 / (1 - f) times more requests arrive than the pod takes
    in, so a queue place goes to one of that many contenders: a client told to
    come back when its place would be served in a quiet moment comes back
    into the same full queue, and after two such retries it has failed while
    the replicas the autoscaler is starting are still loading. The gate
    answers with it and the simulator models it, so both give clients the
    same advice.
    """
    service = service_mean if service_mean is not None else busy_seconds
    admitted = 1.0 - min(max(refused_fraction, 0.0), _MAX_REFUSED_FRACTION)
    if slots < 1:  # no slot will free: the longest
        return RETRY_AFTER_MAX_SECONDS
    estimate = service * position / slots / admitted * RETRY_AFTER_MARGIN
    if not estimate < RETRY_AFTER_MAX_SECONDS:  # NaN and infinity too: advise the longest
        return RETRY_AFTER_MAX_SECONDS
    return max(1, math.ceil(estimate))


#: The most request-body bytes the gate holds at once unless told otherwise. Room for
#: every slot and queue place at the largest body is 240 MiB by default, past the gate
#: container's 256Mi once the process itself (about 56 MiB) and the allocator's slack
#: are added; bodies past this are an overload the model could not take in sooner.
HELD_BODY_BYTES_CAP = 96 * 1024 * 1024


def held_body_bytes(max_in_flight: int, queue_size: int, max_body_bytes: int) -> int:
    """The request-body bytes a gate holds at once by default: a body of the largest size
    for every slot and queue place, at most :data:`HELD_BODY_BYTES_CAP`, and at least one
    body of the largest size (the gate and the operator's sizing of its memory agree)."""
    every_place = (max_in_flight + queue_size) * max_body_bytes
    return max(max_body_bytes, min(every_place, HELD_BODY_BYTES_CAP))
