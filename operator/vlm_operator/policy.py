"""The scaling policy: signals and pod counts in, desired replicas out.

A pure, deterministic function, :func:`recommend`, decides each control-loop
tick. Everything it remembers between ticks is a small
:class:`PolicyState` that round-trips through JSON, so the operator keeps it
in the VLMService status and a restarted operator does not forget its
stabilization windows.

The rules, and the failures of other autoscalers they answer:

- **Demand is running + waiting + refused.** A pod's gate caps what runs
  inside the model; the queue behind it is the demand the cap hides
  (knative/serving#2141, ray#20977), and the requests refused while it is
  full are the demand the queue hides: a refused fraction e of the arrivals
  adds running × e / (1 - e) (Little's law on the admitted ones), at most as
  much again as is seen (clients retry, and are refused more than once).
  Pods needed = ⌈demand / (maxInFlight × targetUtilization)⌉, the demand
  averaged over the rate window (``metrics.windowSeconds``). On a
  quiet demand (a closed loop) a rise counts as soon as two samples in a row
  show it, or at once when a queue shows (one sample is as good as two, and
  waiting for the second delays every step by a tick). On an open load (a
  demand whose sample-to-sample spread is at least 0.3 × Poisson's √demand; a
  closed loop only jitters as answers turn over into new requests) it counts
  once two rate windows in a row show it: such a load's in-flight count
  wanders in clusters lasting tens of seconds, and a pod bought on one is
  taken away again when it has passed.
- **Hysteresis in requests, not percent.** Scale up only when the demand
  exceeds the pods by more than a band, and down only when it fits in fewer
  pods with the band to spare. The band is a quarter of a pod's worth of
  requests, or twice the demand's own sample-to-sample noise σ if that is
  wider (an open load of ~100 in flight wanders by ~10 requests; a closed
  loop not at all); the spare a scale-down leaves is 1.6 σ, as its one-pod
  steps wait longer (below), σ there being its moving mean over ten
  minutes: one window's σ, the median of two dozen steps, wanders by half
  (a band of ±4 to ±10 requests at a steady 4 req/s), and each dip of it
  took a pod an hour on. Or, if larger, the ten-minute mean of σ over
  Poisson's (σ / √ of the mean in flight) times √ of the mean in flight
  now, which follows a step of an open load where the mean of σ lags it
  by minutes. That counts no higher than the window's σ or, if larger, √
  of the mean in flight (an open load's count), so a load gone quiet is
  not held up by the noise it had. A queue (waiting > 0) is excused by the
  noise band only: the quarter-pod tolerance is for running requests over the
  target, as behind a round-robin Service the pod with the queue keeps
  getting its share of new requests. Behind a least-request balancer
  (``autoscaling.loadBalancing: LeastRequest``) new requests go to the pod
  with a free slot and a queue drains into the next one, so waiting requests
  get the same band as running ones and a step is sized without that extra
  pod (8 in flight on one pod ask for 2 pods, not 3). But a
  queue of one request on a fleet counts only once a second sample shows a
  queue too: Prometheus scrapes the gates at different
  instants, so a request that finished on one pod, and whose client's next
  request waits on another, can be counted on both. A 10 % tolerance band
  means nothing at 1-4 replicas (kubernetes#116984), and a band narrower
  than the noise churns (ray#18925).
- **Stabilization.** A scale-down goes to the highest recommendation of the
  last ``scaleDown.stabilizationWindowSeconds``, moves in bounded steps (a
  tenth of the pods at most, unless the load collapsed), and waits a rate
  window after any change before the next step: fewer pods run fuller and
  slower, so the demand rises again by itself, and the demand measured on
  more pods understates what fewer will hold. A step goes further at once
  only as far as that growth is known not to matter: down to the pods the
  arrivals need by Little's law, or to the fewest on which the fleet's P95
  and its in-flight count, both grown in proportion to the pods taken away,
  still fit (the target's 93 %; a pod's share of the demand). A pod or two
  fewer on a noisy
  load (a noise band of half a pod or more) is what a dip of the noise looks
  like: that step waits until the highest recommendation of two windows
  allows it, so the fleet sits as low (with the narrower spare) but a dip of
  one window no longer moves it, and a steady load does not ratchet down a
  pod at a time and back up; having waited, it goes at once (two pods are
  more than a tenth of a small fleet), and if the window will allow a pod
  more within a rate window, it waits for that and goes once. Unless the
  arrivals are falling: a day's evening (1 request/s an hour) puts the
  rate's 10-minute moving mean three standard deviations of Poisson noise
  under its 40-minute one, which a steady load does not, and then the step
  goes after one window. And a step
  on a noisy load, once the window allows it, lands where the demand's mean
  since the last change fits with the same spare (a tenth of the pods at
  most): the window's highest recommendation is a high quantile of the
  noise, and followed alone it takes a fleet down in several steps where
  one does. A backlog's drain answers faster than requests arrive, so
  refusals and bursts start the rate's means anew. But a load that
  collapsed (all it asked for over the last rate window fits in half the
  pods, and in three pods fewer: a burst or a backlog is over) goes down
  without waiting out the window, since noise moves the demand by a pod or
  two. Short of a collapse, a window whose highest recommendation is half as
  much again as the arrivals keep in flight (or the demand now, if more), a
  stabilization window or less after refusals or a burst, forgets the
  drained backlog's recommendations: none counts above this tick's (noise
  alone never forgets: it never refused). A collapse's step goes no lower
  than the arrivals need if each stays in
  flight the P95 the fleet aims for, 93 % of the target (Little's law: fewer
  pods run fuller and slower, and the in-flight count of an idle fleet
  understates what a busy one holds; the mean stay is under the P95, and at
  the whole target a cold start's collapse landed a pod high, a scale-down
  more once the load had settled).
  And a step that is no collapse goes no lower than the P95 allows: near the
  target a fleet's P95 grows in proportion to the pods taken away (P95 ×
  pods hardly moves), so once the fleet's P95 (a moving mean of five
  minutes, taken after the last change, burst or refusal has left its
  window) is at least 0.8 of the target and the demand at least 0.7 of the
  fleet's per-pod target, no step goes to fewer pods n than keep the P95 it
  predicts there (P95 × pods ÷ n) under 93 % of the target. The demand's
  noise cannot tell a step a pod too far from the right one; the P95 it
  would cause can, before the guard has to buy the pod back. Where the P95
  of the fleet that stepped stopped the step, those pods are kept while the
  demand holds (as the guard's are, below, but not while the arrivals
  fall): near the target the P95 is flat, then a cliff (10.1 s on 30 pods
  at 10 req/s, 10.3 s on 28, 13.7 s on 26), and taken again on each smaller
  fleet it walks down to the cliff a scale-down at a time. So are the pods
  a queue buys back when such a floor's fleet falls short, at the floor's
  demand (the short fleet's is a queue's, and the share of it would take
  them back), and with no floor remembered, the pod or two a steady load's
  demand buys (or more, on an open load whose arrivals did not rise: a
  clump of slow answers), at the demand the fleet ran since its last
  change. A scale-up goes to the lowest recommendation of
  ``scaleUp.stabilizationWindowSeconds`` (0 by default: react at once) and
  adds at most max(maxPodsPerStep, maxPercentPerStep % of current) pods per
  tick.
- **Bursts.** When the latest demand needs twice the ready pods, scale up to
  it at once (no step limit), and never down while a sample of the burst
  window still does.
- **P95 guard.** A fleet P95 over the target never scales down, and scales
  up by one pod over the capacity even when the concurrency looks fine, once
  the mean P95 of the last four rate windows is over the target too (one
  window's P95 is over it minutes an hour on the fewest pods that meet it
  over the hour); but not while pods are starting, not until the requests
  that queued before the last change, or behind the last refusal or burst,
  have left the P95 window (and then on the P95 of a rate window at least,
  taken since: a drained backlog's P95 is its queue's, not the fleet's,
  and a pod bought on it held the scale-down window up with it), and not
  on a P95 of fewer
  than 20 answers (then it is just the slowest one). What the
  guard learns is kept: no scale-down below the fleet it bought while the
  demand stays within a pod (and the band) of what it was (what the fleet
  ran since its last change, if less than the window's mean, which the queue
  that missed the target swelled), since concurrency
  alone, which calls the smaller fleet enough, would only lead back to it
  (on an open load the in-flight count clusters, and a pod at its target
  on average is over it often enough to miss the P95).
- **Start-up aware.** Pods that exist but are not ready are capacity on its
  way: while they load, the queue grows by itself and only a burst buys
  more. Pods Pending longer than ``pendingTimeoutSeconds``, or on a node and
  not ready for longer than that and the model's start-up budget (a crash
  loop, an image that does not pull), are not on their way (and the decision
  says ScalingLimited).
- **Missing signals never scale down.** An empty, NaN, negative, absurd
  (over a billion), stale or failed signal is "no signal", never zero
  (keda#3065): any of the five, as the arrival rate gates the P95 guard and
  the error rate counts refused demand. The policy then holds, scales up
  only on what it still reads now (a queue it can still see; never on the
  window's samples from before an outage), or, with
  ``missingSignals.action: Fallback``, raises to ``fallbackReplicas``.
  A demand with a part missing (running without waiting) is a lower bound:
  it may scale up on its tick, but is never recorded, as it would read as a
  fall (or as noise) once the part is back. When the signals come back, or
  the loop does, after a gap longer than half the scale-down window, the
  window holds a fresh recommendation or two: no step down until a whole
  window was seen again. A shorter gap (a few failed reads, a quick restart,
  whose state the status carries; it is written at least every 30 s) leaves
  most of the window seen, and only a collapse, which reads the last rate
  windows, waits a rate window again. A stale read seen again is no new
  sample. A P95 or error rate that is NaN because nothing finished in the
  window (arrival rate 0: an idle service, or the first requests after
  idling still running) is no missing signal. A stored state field that does
  not parse is forgotten, and no step down comes before a whole scale-down
  window has been seen again (what was lost may be the window's highest
  recommendation).

This module is pure: it imports neither ``kubernetes``, ``kopf`` nor ``httpx``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from operator import sub
from typing import Any, Literal, TypeVar

from vlm_operator.models import AutoscalingSpec, VLMServiceSpec

__all__ = ["Decision", "PodCounts", "PolicyState", "Signals", "recommend"]

Direction = Literal["up", "down", "hold"]
V = TypeVar("V")

#: Entries kept per history in the state; bounds the status object's size.
MAX_HISTORY = 48
#: Queue tolerated before a pod is added, in pods' worth of requests.
UP_TOLERANCE = 0.25
#: Spare capacity a scale-down must leave, in pods' worth of requests.
DOWN_SPARE = 0.25
#: Width of the hysteresis band in σ of the demand's sample-to-sample noise.
NOISE_WIDTH = 2.0
#: The same for the spare a scale-down leaves: narrower, as a small step on
#: a noisy load waits SMALL_STEP_WAIT_WINDOWS windows (the fleet sits as low,
#: but one window's dip no longer moves it).
DOWN_NOISE_WIDTH = 1.6
#: Stabilization windows whose highest recommendation a small scale-down
#: waits for on a noisy load...
SMALL_STEP_WAIT_WINDOWS = 2
#: ...small being a fall of at most this many pods...
SMALL_STEP_PODS = 2
#: ...and noisy a load whose noise band (NOISE_WIDTH σ) is this many pods wide.
SMALL_STEP_WAIT_BAND = 0.5
#: Time constant of the moving means of the demand's noise, and of its noise
#: over Poisson's (σ / √ of the mean in flight), that the spare of a
#: scale-down takes...
NOISE_MEAN_SECONDS = 600.0
#: ...from windows of this many samples at least...
NOISE_MIN_SAMPLES = 3
#: ...and, for the noise over Poisson's, a mean in flight of this many
#: requests at least (over nearly nothing, it measures nothing).
NOISE_SPREAD_MIN_DEMAND = 1.0
#: Time constants of the two moving means of the arrival rate that tell a
#: falling load (a day's evening) from a steady one...
ARRIVAL_TREND_FAST_SECONDS = 600.0
ARRIVAL_TREND_SLOW_SECONDS = 2400.0
#: ...by the slow one over the fast one by this many standard deviations of
#: their difference on a steady Poisson load of that rate (and a rate
#: window's arrivals that rose, by as many of its count's over the slow one).
ARRIVAL_FALL_SIGMAS = 3.0
#: Time constant of the moving mean of the demand since the last change, on
#: which a scale-down on a noisy load lands...
LEVEL_SECONDS = 600.0
#: ...once it spans this many stabilization windows (those a small step waits).
LANDING_WINDOWS = 2.0
#: A scale-down that is not a collapse removes at most this fraction of the
#: pods per step (one at least): the demand measured on more pods understates
#: what fewer will hold, so each step is measured before the next.
DESCENT_STEP_FRACTION = 0.1
#: Rate windows (plus the P95 target) the guard waits after capacity changed:
#: requests queued before a new pod was ready keep the P95 high that long.
GUARD_SETTLE_WINDOWS = 2.0
#: Answers in the rate window below which the P95 guard does not act.
GUARD_MIN_ANSWERS = 20
#: Rate windows over which a load must have needed at most half the pods to
#: count as collapsed (and be scaled down without the whole stabilization window).
COLLAPSE_WINDOWS = 1.0
#: A window whose highest recommendation is this many times what the arrivals
#: keep in flight (and COLLAPSE_MIN_PODS pods more), a stabilization window
#: or less after refusals or a burst, holds a drained backlog's
#: recommendations: forgotten, as noise moves a recommendation by a pod or two.
BACKLOG_EXCESS = 1.5
#: Pods by which a collapsed load must have fallen: noise moves one by a pod or two.
COLLAPSE_MIN_PODS = 3
#: Spread of the demand (its noise estimate), as a fraction of Poisson's
#: √demand, from which a load counts as open (arrivals independent of answers).
OPEN_LOAD_SPREAD = 0.3
#: The refused fraction of arrivals up to which refused demand is counted.
MAX_REFUSED_FRACTION = 0.95
#: Requests by which the summed gauges of pods scraped at different instants
#: can overstate a queue on one sample (a request counted on two pods).
SCRAPE_SKEW_REQUESTS = 1.0
#: Rate windows whose P95 signals the guard averages before it buys a pod: one
#: window's P95 is over the target a few percent of the time even on a fleet
#: that meets it over the hour.
GUARD_P95_WINDOWS = 4
#: A scale-down that is not a collapse goes no lower than the fleet on which
#: the P95, grown in proportion to the pods taken away, stays under this
#: fraction of the target (near the target a fleet's P95 × pods hardly moves
#: with the pods: 477-484 on 42-47 pods at 16 req/s)...
LATENCY_HEADROOM = 0.93
#: ...once the P95 is at least this fraction of the target...
LATENCY_FLOOR_FROM = 0.8
#: ...and the demand at least this fraction of the fleet's per-pod target:
#: below either, the P95 is mostly the model's own time and grows far less
#: than the load on each pod (a model that takes 10 s alone is near a 12 s
#: target at any load, and its fleet would never shrink).
LATENCY_FLOOR_LOAD = 0.7
#: Rate windows: the time constant of the moving mean of the fleet's P95 that
#: floor is taken from (one window's P95 wanders by a few tenths of a second).
FLEET_P95_WINDOWS = 10.0
#: Sync periods between two trusted ticks beyond which the signals were gone
#: (untrusted ticks, or the loop down) for a while: one tick missed, woken
#: late or failed, is no gap. A collapse then waits a rate window again...
TRUST_GAP_PERIODS = 2.5
#: ...and a gap longer than this fraction of the scale-down window (and than
#: those periods) starts the window's observation again: too little of it
#: was seen. Shorter (an outage of a few ticks, an operator's quick restart,
#: whose state the status carries) most of it was, and it goes on.
TRUST_GAP_WINDOW = 0.5
#: Reads whose times (tick time - age) differ by less than this are one read:
#: the loop's clock and the reader's differ by the read's own duration.
SAME_READ_SECONDS = 0.5
_STATE_VERSION = 1
#: A signal above this is no signal: no fleet holds a billion requests, nor
#: waits a billion seconds, and arithmetic on such values overflows.
MAX_SIGNAL = 1e9
#: Pod counts a stored state may hold: the schema's bound on maxReplicas.
MAX_PODS = 10000
# Demand a hair over a multiple of the per-pod target (floating-point noise of
# rates and averages) must not buy a whole extra pod.
_EPS = 1e-6


@dataclass(frozen=True)
class Signals:
    """The fleet's signals as read from Prometheus. None means "no signal"."""

    running: float | None
    waiting: float | None
    p95_seconds: float | None
    arrival_rate: float | None
    error_rate: float | None
    age_seconds: float = 0.0
    error: str | None = None
    #: Prometheus answered with a warning (a Thanos or Mimir store missing):
    #: the sums may lack series. The operator holds scale-down on it, as on an
    #: unscraped pod; the policy reads the values as they are.
    partial: str | None = None


@dataclass(frozen=True)
class PodCounts:
    """The Deployment's pods as the operator sees them."""

    current: int  # Deployment spec.replicas now
    ready: int  # ready pods
    starting: int  # exist but not ready (pending or loading the model)
    stuck: int = 0  # Pending longer than pendingTimeoutSeconds (part of ``starting``)
    unready: int = 0  # on a node, not ready for as long (part of ``starting``)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between ticks (kept in the VLMService status).

    ``down`` and ``up`` are monotonic queues of (time, recommendation): the
    window maximum (scale-down) and minimum (scale-up) are their first entry,
    and an entry is dropped as soon as a later one dominates it, so they stay
    short. ``demand`` holds the complete demand samples of the scale-down or
    burst window and a rate window more (the recent ones one by one);
    ``settled_at`` is the last time capacity changed (a scale-up decided or a
    pod still starting) or requests queued behind refusals or a burst, which
    the P95 guard waits out; ``queued_at`` the
    last tick that saw a queue, which confirms a one-request queue on a fleet.
    """

    down: tuple[tuple[float, int], ...] = ()
    up: tuple[tuple[float, int], ...] = ()
    demand: tuple[tuple[float, float], ...] = ()
    settled_at: float | None = None
    changed_at: float | None = None
    #: P95 signals of the guard's averaging span: (time, seconds).
    p95: tuple[tuple[float, float], ...] = ()
    #: The last tick whose sample showed a queue (cleared by one without).
    queued_at: float | None = None
    #: What the P95 guard learned: (time, pods, demand) - one pod fewer than
    #: ``pods`` missed the P95 target at this window-mean demand.
    guard_floor: tuple[float, int, float] | None = None
    #: The fewest pods found to hold a demand without the guard: (time, pods,
    #: demand) - where a scale-down stopped at the latency floor, or the pods
    #: bought back when fewer fell short at this window-mean demand.
    kept_floor: tuple[float, int, float] | None = None
    #: The demand since the last change (its first rate window left out):
    #: (first, last, moving mean over LEVEL_SECONDS).
    demand_since_change: tuple[float, float, float] | None = None
    #: Since when no burst or refusal disturbed the arrival rate...
    calm_since: float | None = None
    #: ...and its two moving means since a rate window after that:
    #: (first, last, fast mean, slow mean).
    arrival_trend: tuple[float, float, float, float] | None = None
    #: The demand's noise (σ) as the scale-down's spare takes it: a moving
    #: mean over NOISE_MEAN_SECONDS of the window's: (first, last, mean).
    noise_mean: tuple[float, float, float] | None = None
    #: ...and of the noise over Poisson's (σ / √ of the window's mean in
    #: flight), which an open load keeps as its rate moves: the same.
    noise_spread: tuple[float, float, float] | None = None
    #: The P95 of the fleet as it is, taken once a change, a burst or refusals
    #: have left the P95 window: (first, last, moving mean, pods it ran on).
    fleet_p95: tuple[float, float, float, int] | None = None
    #: Since when the signals have been trusted, with no gap longer than
    #: TRUST_GAP_WINDOW of the scale-down window; the last trusted tick; and
    #: the first after the last gap of more than TRUST_GAP_PERIODS: (first,
    #: last, resumed). The scale-down window holds recommendations of trusted
    #: ticks only, so a span shorter than the window is a window not yet
    #: observed (after a start, a long outage or a long gap in the loop).
    trusted: tuple[float, float, float] | None = None
    #: When the last sample recorded was read (tick time - its age): a tick
    #: that sees the same read again records nothing, as the same value twice
    #: would read as a quieter demand.
    read_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A small JSON-safe dict, every number as it is.

        Every optional field is present, as ``None`` when unset: the status is
        written as a JSON merge patch, where a key left out keeps its stored
        value and only an explicit null deletes it (:meth:`from_dict` reads
        null as unset). Nothing is rounded: a float's shortest repr reads back
        as the same float (in Go's JSON as in Python's), and a time rounded to
        the millisecond expired a window's entry, or ended a wait, up to half
        a millisecond early, so a restarted operator could step down a tick
        before the running one would have.
        """
        out: dict[str, Any] = {
            "version": _STATE_VERSION,
            "down": [[t, n] for t, n in self.down],
            "up": [[t, n] for t, n in self.up],
            "demand": [[t, d] for t, d in self.demand],
            "p95": [[t, p] for t, p in self.p95],
            "settledAt": self.settled_at,
            "changedAt": self.changed_at,
            "queuedAt": self.queued_at,
            "guardFloor": None if self.guard_floor is None else list(self.guard_floor),
            "keptFloor": None if self.kept_floor is None else list(self.kept_floor),
            "demandSinceChange": (
                None if self.demand_since_change is None else list(self.demand_since_change)
            ),
            "calmSince": self.calm_since,
            "arrivalTrend": None if self.arrival_trend is None else list(self.arrival_trend),
            "noiseMean": None if self.noise_mean is None else list(self.noise_mean),
            "noiseSpread": None if self.noise_spread is None else list(self.noise_spread),
            "fleetP95": None if self.fleet_p95 is None else list(self.fleet_p95),
            "trusted": None if self.trusted is None else list(self.trusted),
            "readAt": self.read_at,
        }
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Any) -> PolicyState:
        """Parse :meth:`to_dict`'s output; anything else gives a fresh state.

        A field that does not parse (a status edited by hand, or written by a
        version with other bounds) is forgotten, and with it how long the
        signals were trusted: the scale-down window's highest recommendation,
        or the wait after a change, may be what was lost, so no step down
        comes before a whole window has been seen again. The other fields
        still hold what they held (a guard's floor, a burst's window).
        """
        if not isinstance(data, Mapping) or data.get("version") != _STATE_VERSION:
            return cls()
        lost: list[str] = []

        def field(key: str, parse: Callable[[], V], default: V) -> V:
            try:
                return parse()
            except (TypeError, ValueError, OverflowError, KeyError):
                lost.append(key)
                return default

        def times(key: str, value: Any) -> tuple[tuple[float, Any], ...]:
            return field(
                key, lambda: tuple((_finite(t), value(v)) for t, v in data.get(key, ())), ()
            )

        def queue(key: str) -> tuple[tuple[float, int], ...]:
            # A window's extreme is its oldest entry: a longer queue than this
            # version keeps merges its oldest entries, as the ticks do.
            return tuple(_capped(list(times(key, _pods))))

        def instant(key: str) -> float | None:
            raw = data.get(key)
            return None if raw is None else field(key, lambda: _finite(raw), None)

        def floor(key: str) -> tuple[float, int, float]:
            t, n, d = data[key]
            return (_finite(t), _pods(n), _amount(d))

        def moving_mean(key: str) -> tuple[float, float, float]:
            first, last, mean = data[key]
            return (*_span(first, last), _amount(mean))

        def arrival_trend() -> tuple[float, float, float, float]:
            first, last, fast, slow = data["arrivalTrend"]
            return (*_span(first, last), _amount(fast), _amount(slow))

        def fleet_p95() -> tuple[float, float, float, int]:
            first, last, mean, pods = data["fleetP95"]
            if _pods(pods) < 1:
                raise ValueError(pods)
            return (*_span(first, last), _amount(mean), pods)

        def trusted() -> tuple[float, float, float]:
            first, last, resumed = data["trusted"]
            first, last = _span(first, last)
            resumed = _finite(resumed)
            if not first <= resumed <= last:
                raise ValueError(resumed)
            return first, last, resumed

        def optional(key: str, parse: Callable[[], V]) -> V | None:
            return None if data.get(key) is None else field(key, parse, None)

        state = cls(
            down=queue("down"),
            up=queue("up"),
            demand=times("demand", _amount)[-MAX_HISTORY:],
            p95=times("p95", _amount)[-MAX_HISTORY:],
            settled_at=instant("settledAt"),
            changed_at=instant("changedAt"),
            queued_at=instant("queuedAt"),
            guard_floor=optional("guardFloor", lambda: floor("guardFloor")),
            kept_floor=optional("keptFloor", lambda: floor("keptFloor")),
            demand_since_change=optional(
                "demandSinceChange", lambda: moving_mean("demandSinceChange")
            ),
            calm_since=instant("calmSince"),
            arrival_trend=optional("arrivalTrend", arrival_trend),
            noise_mean=optional("noiseMean", lambda: moving_mean("noiseMean")),
            noise_spread=optional("noiseSpread", lambda: moving_mean("noiseSpread")),
            fleet_p95=optional("fleetP95", fleet_p95),
            trusted=optional("trusted", trusted),
            read_at=instant("readAt"),
        )
        return replace(state, trusted=None) if lost else state


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    number = float(value)  # OverflowError for an int beyond a float's range
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _amount(value: Any) -> float:
    """A stored signal value: as :func:`_value` would have let it in."""
    number = _finite(value)
    if not 0 <= number <= MAX_SIGNAL:
        raise ValueError(value)
    return number


def _span(first: Any, last: Any) -> tuple[float, float]:
    """A moving mean's span, which must not end before it begins."""
    start, end = _finite(first), _finite(last)
    if start > end:
        raise ValueError((first, last))
    return start, end


def _pods(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PODS:
        raise ValueError(value)
    return value


@dataclass(frozen=True)
class Decision:
    """One tick's decision, with its reason in numbers."""

    replicas: int
    direction: Direction
    reason: str
    state: PolicyState
    signals_ok: bool
    limited: str | None = None
    #: Why the signals are not trusted (None when they are), without the tick's values.
    signal_problems: str | None = None
    #: False when autoscaling is disabled: the replicas are the spec's, whatever the signals.
    autoscaling: bool = True


# ------------------------------------------------------------------------ helpers


def _value(x: float | None) -> float | None:
    """A usable signal value, or None for empty / NaN / infinite / negative / absurd."""
    if x is None or isinstance(x, bool):
        return None
    try:
        number = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 <= number <= MAX_SIGNAL:  # NaN fails this too
        return None
    return number


def _pods_for(demand: float, per_pod: float) -> int:
    return max(0, math.ceil(demand / per_pod - _EPS))


# The history filters below run some ten times a tick over up to MAX_HISTORY
# samples: the window's start is computed once (the same float each time) and
# the kept entries are the state's own tuples, not copies.


def _recent(samples: tuple[tuple[float, V], ...], now: float, span: float) -> list[tuple[float, V]]:
    """The samples of the last ``span`` seconds (now - span < t <= now), in order."""
    start = now - span
    return [sample for sample in samples if start < sample[0] <= now]


def _values(samples: tuple[tuple[float, float], ...], now: float, span: float) -> list[float]:
    """The values of the samples of the last ``span`` seconds, in order."""
    start = now - span
    return [d for t, d in samples if start < t <= now]


def _record(
    samples: tuple[tuple[float, float], ...],
    now: float,
    value: float,
    history: float,
    recent: float,
) -> tuple[tuple[float, float], ...]:
    """Add a sample; keep ``history`` seconds in at most MAX_HISTORY entries.

    The decisions read the samples of the last ``recent`` seconds (the rate
    windows, the burst window) one by one, and older ones only together (the
    noise, the level, how long the window was seen): each part has half the
    entries. Samples of a part closer together than its span / (half the
    entries) merge, at the earlier time; the newest never does. Merged at one
    spacing over the whole history, a long scale-down window left the rate
    window without a sample for minutes (an hour's window merges samples a
    minute and more apart), and the policy blind to a queue it could see.
    """
    kept = _recent(samples, now, history)
    recent = min(recent, history)
    # A part's entries: spaced at least its spacing apart, one more at its edge.
    part = MAX_HISTORY // 2 - 2
    fine, coarse = recent / part, (history - recent) / part
    edge = now - recent
    if len(kept) > 1:
        (t_before, d_before), (t_last, d_last) = kept[-2], kept[-1]
        if t_last - t_before < (fine if t_before > edge else coarse):
            kept[-2:] = [(t_before, (d_before + d_last) / 2)]
    kept.append((now, value))
    merged: list[tuple[float, float]] = []
    for sample in kept:
        if merged and sample[0] <= edge and sample[0] - merged[-1][0] < coarse:
            merged[-1] = (merged[-1][0], (merged[-1][1] + sample[1]) / 2)
        else:
            merged.append(sample)
    return tuple(merged[-MAX_HISTORY:])


def _noise(samples: tuple[tuple[float, float], ...], now: float, window: float) -> float:
    """Robust sample-to-sample noise of the demand (σ from the median step).

    The median of the absolute differences ignores a single step change, so a
    real rise does not widen the band; for independent samples of σ, the
    median |difference| is 0.954 σ.
    """
    values = _values(samples, now, window)
    # |b - a| of each pair in a row, with C-level map: operator.sub(b, a) is b - a.
    steps: list[float] = sorted(map(abs, map(sub, values[1:], values)))
    if not steps:
        return 0.0
    mid = len(steps) // 2
    median = steps[mid] if len(steps) % 2 else (steps[mid - 1] + steps[mid]) / 2
    return median / 0.954


def _mean(samples: tuple[tuple[float, float], ...], now: float, window: float) -> float | None:
    values = _values(samples, now, window)
    return sum(values) / len(values) if values else None


def _push_max(
    queue: tuple[tuple[float, int], ...], now: float, value: int, window: float
) -> tuple[tuple[float, int], ...]:
    """Append to a window-maximum queue: drop expired entries and dominated ones.

    Past MAX_HISTORY entries (a fall of a pod or more every tick for that many
    ticks) the two oldest merge into the larger value at the later time, so
    the maximum of a span reads high, never low: dropping the oldest would
    drop the window's maximum, and a scale-down would go below it.
    """
    start = now - window
    kept = [(t, v) for t, v in queue if start < t <= now and v > value]
    kept.append((now, value))
    return tuple(_capped(kept))


def _push_min(
    queue: tuple[tuple[float, int], ...], now: float, value: int, window: float
) -> tuple[tuple[float, int], ...]:
    """Append to a window-minimum queue, as :func:`_push_max` does to a maximum's:
    past MAX_HISTORY entries the minimum of a span reads low, never high."""
    start = now - window
    kept = [(t, v) for t, v in queue if start < t <= now and v < value]
    kept.append((now, value))
    return tuple(_capped(kept))


def _capped(kept: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """A window-extreme queue in MAX_HISTORY entries: the two oldest merge into the
    oldest's value (the extreme) at the later time, until it fits."""
    while len(kept) > MAX_HISTORY:
        kept[0:2] = [(kept[1][0], kept[0][1])]
    return kept


def _moving_mean(
    mean: float, first: float, last: float, now: float, value: float, tau: float
) -> float:
    """An exponentially weighted mean (time constant ``tau``) of the samples since ``first``.

    Weighted by the time each sample stands for and normalised by the weight
    seen so far, so a young mean is the plain mean of its samples rather than
    pulled towards its first one (which would make two means of different time
    constants differ by that sample's noise alone).
    """
    decay = math.exp(-(now - last) / tau)
    held = 1.0 - math.exp(-(last - first) / tau)
    total = 1.0 - math.exp(-(now - first) / tau)
    if total <= 0.0:  # a span too short to weigh (times a float's step apart)
        return value
    return (mean * held * decay + value * (1.0 - decay)) / total


def _track_arrivals(
    state: PolicyState,
    now: float,
    arrival: float | None,
    disturbed: bool,
    window: float,
    period: float,
) -> tuple[float | None, tuple[float, float, float, float] | None]:
    """The next (calm_since, arrival_trend): two moving means of the arrival rate.

    A burst, refusals or a missing signal start them anew: a backlog's drain
    answers faster than requests arrive, and so does the rate window after it,
    which is left out too. So does a gap of more than a rate window or two
    loop periods between samples (the loop was down).
    """
    calm_since, trend = state.calm_since, state.arrival_trend
    if disturbed or arrival is None:
        return None, None
    if calm_since is None or calm_since > now:
        return now, None
    if now - calm_since < window:
        return calm_since, None
    if trend is None or not 0.0 <= now - trend[1] <= max(window, 2 * period):
        # The first sample, or one after a gap (the loop was down) or a clock
        # that moved back: begin again from here.
        return calm_since, (now, now, arrival, arrival)
    first, last, fast, slow = trend
    if now == last:
        return calm_since, trend
    # Rounded as the status keeps them, so a restarted operator decides alike.
    return calm_since, (
        first,
        now,
        round(_moving_mean(fast, first, last, now, arrival, ARRIVAL_TREND_FAST_SECONDS), 6),
        round(_moving_mean(slow, first, last, now, arrival, ARRIVAL_TREND_SLOW_SECONDS), 6),
    )


def _track_noise(
    mean: tuple[float, float, float] | None,
    now: float,
    noise: float | None,
    *,
    fresh: bool,
    gap: float,
) -> tuple[float, float, float] | None:
    """The next moving mean of a measure of the demand's noise: (first, last, mean).

    Taken on ticks that recorded a sample, when the caller knows the measure
    (``noise`` None: the window holds too few samples, one step's σ being no
    estimate). A gap longer than ``gap`` (the loop was down, or the clock
    moved back) starts it anew.
    """
    if mean is not None and not 0.0 <= now - mean[1] <= gap:
        mean = None
    if not fresh or noise is None:
        return mean
    return _advanced(mean, now, noise, NOISE_MEAN_SECONDS, digits=6)


def _advanced(
    mean: tuple[float, float, float] | None, now: float, value: float, tau: float, *, digits: int
) -> tuple[float, float, float]:
    """A (first, last, moving mean) with ``value`` taken at ``now``; begun if None.

    Rounded as the status keeps it, so a restarted operator decides alike.
    """
    if mean is None:
        return (now, now, value)
    first, last, previous = mean
    if now <= last:
        return mean
    return (first, now, round(_moving_mean(previous, first, last, now, value, tau), digits))


def _track_fleet_p95(
    state: PolicyState,
    now: float,
    p95: float | None,
    pods: int,
    disturbed: bool,
    *,
    since: float,
    span: float,
    tau: float,
) -> tuple[float, float, float, int] | None:
    """The next ``fleet_p95``: a moving mean of the P95 signal on the fleet as it is.

    Only signals taken ``since`` the requests queued before the last change,
    burst or refusal left the P95 window count (a cold start's drain keeps the
    P95 high for minutes); a disturbance (a burst, refusals, missing signals,
    pods starting) forgets it. After a change the previous fleet's mean stands
    until the new fleet's first such signal: near the target P95 × pods
    hardly moves with the pods, so it still tells how far a step may go.
    """
    if pods < 1:
        return None  # no fleet, no P95 of it
    kept = state.fleet_p95
    if disturbed or (kept is not None and not kept[1] <= now <= kept[1] + span):
        kept = None
    if disturbed or p95 is None or now < since or (kept is not None and now == kept[1]):
        return kept
    if kept is None or kept[3] != pods:
        return (now, now, p95, pods)
    first, last, mean, _ = kept
    return (first, now, round(_moving_mean(mean, first, last, now, p95, tau), 3), pods)


def _floor_now(
    floor: tuple[float, int, float] | None,
    now: float,
    level: float | None,
    down_band: float,
    per_pod: float,
) -> tuple[tuple[float, int, float] | None, int]:
    """A remembered floor as it holds at ``level``, and the pods it holds.

    Forgotten once the demand falls clearly below the floor's (a pod and the
    spare), or to next to nothing (a floor learnt at a demand under a pod's
    target and the spare could never fall clearly below, and kept its fleet
    on an idle service). In between it holds the pods that carry each what
    the floor's fleet did.
    """
    if floor is None or floor[0] > now:
        return None, 0
    if level is not None and (
        level + down_band + per_pod < floor[2] or level < DOWN_SPARE * per_pod
    ):
        return None, 0
    pods = floor[1]
    if level is not None and level + down_band < floor[2]:  # a share under 1
        share = (level + down_band) / floor[2]
        pods = max(1, math.ceil(floor[1] * share - _EPS))
    return floor, pods


def _p95_on(fleet_p95: tuple[float, float, float, int], latency_floor: int) -> str:
    """The reason's account of a latency floor: what one pod fewer would make the P95."""
    _, _, p95, pods = fleet_p95
    said = f"p95 {_fmt(round(p95, 1))}s on {pods} pods"
    fewer = latency_floor - 1
    if fewer < 1:
        return said
    return f"{said} would be {_fmt(round(p95 * pods / fewer, 1))}s on {fewer}"


def _arrivals_falling(trend: tuple[float, float, float, float] | None) -> bool:
    """Whether the arrival rate is falling: its fast mean clearly under its slow one.

    On a steady Poisson load of rate r, the difference of two moving means of
    time constants F and S has variance r (1/2F + 1/2S - 2/(F + S)); a day's
    evening, falling 1 request/s an hour, moves it by up to (S - F) / 3600.
    """
    if trend is None:
        return False
    first, last, fast, slow = trend
    if last - first < ARRIVAL_TREND_FAST_SECONDS:
        return False
    f, s = ARRIVAL_TREND_FAST_SECONDS, ARRIVAL_TREND_SLOW_SECONDS
    variance = max(slow, 0.0) * (1 / (2 * f) + 1 / (2 * s) - 2 / (f + s))
    return slow - fast >= ARRIVAL_FALL_SIGMAS * math.sqrt(variance) and slow > fast


def _arrivals_steady(
    trend: tuple[float, float, float, float] | None, arrival: float | None, window: float
) -> bool:
    """Whether this rate window's arrivals are within the noise of the slow mean's.

    A Poisson count over a window W at rate r has σ = √(r / W) in requests/s:
    up to ARRIVAL_FALL_SIGMAS of that over the slow mean is no rise.
    """
    if trend is None or arrival is None:
        return False
    slow = max(trend[3], 0.0)
    return arrival <= slow + ARRIVAL_FALL_SIGMAS * math.sqrt(slow / window)


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.1f}" if x != int(x) else str(int(x))


#: The values of :class:`Signals` a tick may read: running, waiting, P95, arrivals, errors.
_Readings = tuple[float | None, float | None, float | None, float | None, float | None]


def _read_signals(signals: Signals, auto: AutoscalingSpec) -> tuple[list[str], bool, _Readings]:
    """Why the signals cannot be trusted, each without the tick's values; whether they
    may be read at all (not failed, not stale); and their usable values (all None when
    they may not)."""
    problems: list[str] = []
    if signals.error is not None:
        problems.append(f"metrics error: {signals.error}")
    elif not signals.age_seconds <= auto.missing_signals.stale_after_seconds:
        problems.append(
            f"signals stale ({_fmt(signals.age_seconds)}s > "
            f"{auto.missing_signals.stale_after_seconds}s)"
        )
    if problems:
        return problems, False, (None, None, None, None, None)
    readings = (
        _value(signals.running),
        _value(signals.waiting),
        _value(signals.p95_seconds),
        _value(signals.arrival_rate),
        _value(signals.error_rate),
    )
    running, waiting, p95, arrival, failing = readings
    missing = [name for name, v in (("running", running), ("waiting", waiting)) if v is None]
    # No request finished in the window (none came, or those that came still
    # run): P95 is NaN by construction, not missing.
    if p95 is None and arrival != 0.0:
        missing.append("p95")
    # The arrival rate gates the P95 guard and the collapse, the error rate
    # counts refused demand: read as 0, a broken one would let a scale-down
    # through. With no answers in the window the error rate is 0/0 (NaN).
    if arrival is None:
        missing.append("arrival_rate")
    elif failing is None and arrival > 0:
        missing.append("error_rate")
    if missing:
        problems.append("no signal: " + ", ".join(missing))
    return problems, True, readings


def _decision(
    replicas: int,
    current: int,
    reason: str,
    state: PolicyState,
    *,
    signals_ok: bool,
    limited: str | None,
    signal_problems: str | None = None,
    autoscaling: bool = True,
) -> Decision:
    direction: Direction = "up" if replicas > current else "down" if replicas < current else "hold"
    return Decision(
        replicas=replicas,
        direction=direction,
        reason=reason,
        state=state,
        signals_ok=signals_ok,
        limited=limited,
        signal_problems=signal_problems,
        autoscaling=autoscaling,
    )


# ------------------------------------------------------------------------- policy


def recommend(
    state: PolicyState,
    signals: Signals,
    pods: PodCounts,
    spec: VLMServiceSpec,
    now: float,
) -> Decision:
    """Decide the replicas for this tick. Pure and deterministic."""
    auto = spec.autoscaling
    current = max(0, pods.current)
    lo, hi = auto.min_replicas, auto.max_replicas

    if not auto.enabled:
        wanted = spec.replicas if spec.replicas is not None else current
        source = f"spec.replicas={wanted}" if spec.replicas is not None else f"kept {wanted}"
        # The signals decide nothing here, but are still reported as they are.
        problems, _, _ = _read_signals(signals, auto)
        return _decision(
            wanted,
            current,
            f"autoscaling disabled: {source}",
            state,
            signals_ok=not problems,
            limited=None,
            signal_problems="; ".join(problems) or None,
            autoscaling=False,
        )

    per_pod = spec.concurrency.max_in_flight * auto.target_utilization
    # Only pods the Deployment still wants are on their way: during a rolling
    # update the surge pods replace old ones (ready + starting exceeds current),
    # and counted as capacity coming they held every scale-up for the rollout.
    on_way = max(0, min(pods.starting - pods.stuck - pods.unready, pods.current - pods.ready))
    capacity = max(0, pods.ready) + on_way
    up_window = float(auto.scale_up.stabilization_window_seconds)
    down_window = float(auto.scale_down.stabilization_window_seconds)
    burst_window = float(auto.scale_up.burst_window_seconds)
    window = float(spec.metrics.window_seconds)

    # --- which signals can be trusted --------------------------------------
    problems, trusted, (running, waiting, p95, arrival, failing) = _read_signals(signals, auto)
    signals_ok = not problems

    # Demand: complete when both parts are present, a lower bound otherwise.
    demand_parts = [v for v in (running, waiting) if v is not None]
    demand = sum(demand_parts) if demand_parts else None
    # Requests refused (429) or failed while requests queue are demand the
    # queues could not hold. An admitted request holds its slot running /
    # admitted-rate seconds (Little's law), so a refused fraction e of the
    # arrivals adds running × e / (1 - e) requests; at most as many as are
    # seen, since a retrying client is refused more than once. Failures with
    # nothing queued (a broken model answering fast) add nothing.
    refused_share = min(failing or 0.0, MAX_REFUSED_FRACTION) if running and waiting else 0.0
    if demand is not None and running and refused_share > 0:
        demand += min(running * refused_share / (1.0 - refused_share), demand)
    demand_complete = running is not None and waiting is not None

    # --- state upkeep -------------------------------------------------------
    # Since when the signals have been trusted: a tick without them leaves the
    # span as it was; the next trusted tick after a long gap (untrusted ticks
    # or the loop down) starts it again, after a shorter one goes on with it.
    trusted_span = state.trusted
    brief = TRUST_GAP_PERIODS * auto.sync_period_seconds
    longest_pause = max(brief, TRUST_GAP_WINDOW * down_window)
    if signals_ok:
        gap = None if trusted_span is None else now - trusted_span[1]
        if trusted_span is None or gap is None or not 0.0 <= gap <= longest_pause:
            trusted_span = (now, now, now)
        else:
            first, _, resumed = trusted_span
            trusted_span = (first, now, now if gap > brief else resumed)
    # A read seen again (signals stale, but not yet past staleAfterSeconds) is
    # no new sample: recorded twice, it would read as a quieter demand.
    read_at = now - signals.age_seconds if trusted else None
    new_read = (
        read_at is None
        or state.read_at is None
        or abs(read_at - state.read_at) >= SAME_READ_SECONDS
    )
    history = max(down_window, burst_window) + window  # covers the down window
    # Read one by one: the rate window, the one before it (open loads), the burst window.
    read_singly = max(2 * window, burst_window)
    recorded = tuple(_recent(state.demand, now, history))
    if demand is not None and demand_complete and new_read:
        recorded = _record(state.demand, now, demand, history, read_singly)
    # A demand with a part missing is a lower bound: never recorded (it would
    # read as a fall once the part is back), it counts this tick alone, for a
    # scale-up on what is still seen.
    samples = recorded
    if demand is not None and not demand_complete:
        samples = (*recorded, (now, demand))
    settled_at = state.settled_at
    if settled_at is not None and settled_at > now:
        settled_at = None  # the clock moved back: forget
    # Refusals queue requests too: the backlog's drain keeps the P95 over the
    # target after its queue is gone, and a pod the guard bought on that would
    # hold the scale-down window up for a window more.
    if on_way > 0 or refused_share > 0:
        settled_at = now

    label = (
        f"waiting={_fmt(waiting)} running={_fmt(running)}"
        + (f" refused={refused_share:.0%}" if refused_share > 0 else "")
        + (f" p95={p95:.1f}s" if p95 is not None else "")
        + f" ready={pods.ready} starting={on_way}"
    )
    limited: str | None = None
    notes: list[str] = []
    if pods.stuck > 0:
        limited = f"{pods.stuck} pods Pending > {auto.pending_timeout_seconds}s"
    elif pods.unready > 0:
        limited = f"{pods.unready} pods not ready past their start-up time"

    # --- recommendations ----------------------------------------------------
    # The hysteresis band, in requests: at least a quarter of a pod, and wider
    # than the demand's own sample-to-sample noise (an open load of ~100 in
    # flight wanders by ~10 requests; a closed loop not at all).
    sigma = _noise(recorded, now, down_window)
    noise = NOISE_WIDTH * sigma
    # The scale-down's spare takes the noise's moving mean: one window's σ,
    # the median of two dozen steps, wanders by half (a band of ±4.2 to
    # ±10.5 requests at a steady 4 req/s), and each time it dipped the fleet
    # stepped down a pod, an hour on. A mean of σ lags a step up of the load
    # by minutes, though: the fleet that had climbed to step-burst's burst
    # stepped down a pod or two in it for the guard to buy back. So it takes
    # the larger of that and the mean of the noise over Poisson's (σ / √ of
    # the window's mean in flight; an open load keeps it as its rate moves)
    # times √ of the window's mean in flight now. Never over this window's σ
    # or, if larger, an open load's count's (√ of its mean), so a load gone
    # quiet is not held up by the noise it had.
    samples_known = len(_values(recorded, now, down_window)) >= NOISE_MIN_SAMPLES
    down_level = _mean(recorded, now, down_window) or 0.0
    fresh = demand is not None and demand_complete and new_read
    gap = max(window, 2 * auto.sync_period_seconds)
    noise_mean = _track_noise(
        state.noise_mean, now, sigma if samples_known else None, fresh=fresh, gap=gap
    )
    spread_known = samples_known and down_level >= NOISE_SPREAD_MIN_DEMAND
    noise_spread = _track_noise(
        state.noise_spread,
        now,
        sigma / math.sqrt(down_level) if spread_known else None,
        fresh=fresh,
        gap=gap,
    )
    sigma_down = sigma
    if noise_mean is not None:
        in_flight = _mean(recorded, now, window) or 0.0
        remembered = noise_mean[2]
        if noise_spread is not None:
            remembered = max(remembered, noise_spread[2] * math.sqrt(down_level))
        sigma_down = min(remembered, max(sigma, math.sqrt(in_flight)))
    # A queue on the latest sample. On a fleet, one waiting request may be a
    # request counted on two pods (their gates are scraped at different
    # instants): it counts once the tick before showed a queue too. On one pod
    # (one scrape) or with more waiting, it counts at once.
    queued_before = state.queued_at is not None and (
        0.0 <= now - state.queued_at <= 2 * auto.sync_period_seconds
    )
    queued = (waiting or 0.0) > 0 and (
        pods.ready <= 1 or (waiting or 0.0) > SCRAPE_SKEW_REQUESTS or queued_before
    )
    # A queue is demand the running slots did not absorb: the quarter-pod
    # tolerance is for running requests over the target, not for a queue, which
    # only the noise band may excuse. Behind round-robin, that is: the pod with
    # the queue keeps getting its share. A least-request balancer sends new
    # requests to free slots, so a queue is demand like running requests.
    tolerant = not queued or auto.load_balancing == "LeastRequest"
    up_band = max(UP_TOLERANCE * per_pod, noise) if tolerant else noise
    down_band = max(DOWN_SPARE * per_pod, DOWN_NOISE_WIDTH * sigma_down)
    # What the P95 guard learned holds while the load does: a scale-down to
    # the fleet that missed the target at this demand would only be bought
    # back. So does the fewest pods found to hold it otherwise (the kept
    # floor): near the target a fleet's P95 is flat, then a cliff (10.1 s on
    # 30 pods at 10 req/s, 10.3 s on 28, 13.7 s on 26), so a latency floor
    # taken again on the fleet it set moves down a pod at a time to the
    # cliff, and a fleet that fell short once falls short again.
    level = _mean(recorded, now, history)
    floor, guard_pods = _floor_now(state.guard_floor, now, level, down_band, per_pod)
    kept, kept_pods = _floor_now(state.kept_floor, now, level, down_band, per_pod)
    floor_pods = max(guard_pods, kept_pods)
    # Up: the mean demand of the rate window. On a closed loop a rise counts
    # once two samples in a row show it, and a queue on the latest sample at
    # once when the demand is quiet (noise under the tolerance), since a second
    # sample would only add a tick to every step's reaction. On an open load a
    # rise counts once two rate windows in a row show it: its
    # in-flight count wanders in clusters that last tens of seconds (a queue,
    # so slower answers, so more in flight), and a pod bought on one is
    # removed again when it has passed. Bursts have their own rule.
    short_mean = _mean(samples, now, window)
    recent = _values(samples, now, window)[-2:]
    sustained = min(recent) if len(recent) == 2 else short_mean
    up_demand = None if short_mean is None else max(short_mean, sustained or 0.0)
    # Open loads are told from closed ones by the spread of their demand
    # against Poisson's (√demand): a closed loop only jitters as answers turn
    # over into new requests (the local cluster's, at ~8 in flight, by enough
    # to pass the quarter-pod tolerance), while the simulated open loads spread
    # 0.7-0.8 × Poisson's even by this estimate, which sees about two thirds
    # of the true spread.
    if short_mean is not None and sigma >= OPEN_LOAD_SPREAD * math.sqrt(short_mean):
        before, until = now - 2 * window, now - window
        earlier = [d for t, d in samples if before < t <= until]
        up_demand = min(short_mean, sum(earlier) / len(earlier)) if earlier else short_mean
    if up_demand is not None and demand is not None and queued and noise < UP_TOLERANCE * per_pod:
        up_demand = max(up_demand, demand)
    need = _pods_for(up_demand - up_band, per_pod) if up_demand is not None else None
    # Down: the pods the demand fits in with the band to spare; the scale-down
    # goes to the highest of these over the stabilization window.
    keep = _pods_for(short_mean + down_band, per_pod) if short_mean is not None else None
    # Burst: the latest demand needs twice the ready pods and a whole pod more
    # than is on its way: go there at once.
    burst_need = _pods_for(demand - UP_TOLERANCE * per_pod, per_pod) if demand is not None else None
    burst = (
        demand is not None
        and burst_need is not None
        and demand >= 2 * max(pods.ready, 1) * per_pod - _EPS
        and demand >= (capacity + 1) * per_pod - _EPS
    )

    p95_target = auto.p95_latency_target_seconds
    # A P95 of fewer than GUARD_MIN_ANSWERS answers is little more than the
    # slowest one: too noisy to buy a pod on.
    answers = (arrival or 0.0) * window
    slow = p95 is not None and p95 > p95_target and answers >= GUARD_MIN_ANSWERS
    # The guard buys a pod when the mean P95 of the last GUARD_P95_WINDOWS
    # windows (of those since capacity last changed) is over the target too,
    # not on one window's: that is over the target for minutes an hour even
    # on the fewest pods that meet it over the hour.
    p95_span = GUARD_P95_WINDOWS * window
    p95_samples = (
        _record(state.p95, now, p95, p95_span, window)
        if p95 is not None and new_read
        else tuple(_recent(state.p95, now, p95_span))
    )
    # The P95 window shows new pods only once the requests that queued before
    # them have left it: GUARD_SETTLE_WINDOWS windows (+ the target) after the
    # change. The guard averages only the P95 signals taken since, and acts
    # once they span a rate window: a backlog that drained slowly (clients
    # coming back after their Retry-After) leaves a signal just over the
    # target as the wait ends, and the pod bought on it would be kept as the
    # guard's lesson.
    settle = GUARD_SETTLE_WINDOWS * window + p95_target
    since = settled_at + settle if settled_at is not None else -math.inf
    guard_ready = on_way == 0 and now - since >= window - _EPS
    settled_p95 = [p for t, p in p95_samples if t >= since]
    guard_p95 = sum(settled_p95) / len(settled_p95) if settled_p95 else None
    sustained_slow = slow and guard_p95 is not None and guard_p95 > p95_target

    up_queue = state.up
    if need is not None:
        up_queue = _push_min(state.up, now, need, up_window) if up_window > 0 else ()
    target = current
    why = "steady"
    # A burst lasts the burst window: no scale-down while any sample in it
    # still needed twice the ready pods.
    peak = max(_values(samples, now, burst_window), default=0.0)
    bursting = burst or peak >= 2 * max(pods.ready, 1) * per_pod - _EPS
    may_go_down = signals_ok and not slow and not bursting

    # Scale-up candidates, each with its reason.
    up_to = current
    # Start-up aware: while pods load, the queue grows by itself; only a burst
    # buys more before they are ready (the backlog is theirs to drain).
    on_demand = False  # bought on the demand alone (no burst, no guard)
    if need is not None and need > current and on_way == 0:
        stabilized = min((n for _, n in up_queue), default=need) if up_window > 0 else need
        if stabilized > current:
            up_to, why = stabilized, "demand"
            on_demand = True
    if burst and burst_need is not None and burst_need >= max(up_to, current + 1):
        up_to, why, on_demand = burst_need, "burst", False
    guarded = pinned = False
    if sustained_slow and guard_ready and capacity + 1 > up_to:
        up_to, why, on_demand = capacity + 1, f"p95 over {_fmt(p95_target)}s", False
        guarded = True
    elif slow and not guard_ready:
        what = "new pods to show in" if on_way > 0 else "what queued before to leave"
        notes.append(f"p95 high: waiting for {what} the {int(window)}s window")
    elif slow and not sustained_slow and guard_p95 is not None:
        notes.append(f"p95 high in one window; {guard_p95:.1f}s over {int(p95_span)}s is on target")

    demanded = up_to if up_to > current else (need or 0)  # before the step limit
    if up_to > current:
        if why != "burst":
            step = max(
                auto.scale_up.max_pods_per_step,
                math.ceil(current * auto.scale_up.max_percent_per_step / 100),
            )
            if up_to > current + step:
                up_to = current + step
                why += f", step limit +{step}"
        target = up_to

    # This tick's recommendation enters the scale-down window: the pods the
    # demand needs with spare, or what this tick scaled up to. The queue keeps
    # SMALL_STEP_WAIT_WINDOWS windows (suffix maxima, so the highest of any
    # recent span is its first entry inside that span); ``in_window`` is the
    # stabilization window's part (this tick's entry even for a window of 0).
    down_span = SMALL_STEP_WAIT_WINDOWS * down_window
    if keep is not None and demand_complete and signals_ok:
        recommended = max(keep, demanded if demanded > current else 0)
        down_queue = _push_max(state.down, now, recommended, down_span)
    else:
        down_queue = tuple(_recent(state.down, now, down_span))
    in_window = [(t, n) for t, n in down_queue if t > now - down_window or t == now]
    # The window must be fully observed: it holds the recommendations of ticks
    # with trusted signals only, and after a start, an outage or a gap in the
    # loop a fresh one or two would stand for all of it. A step needs the whole
    # stabilization window seen since; a collapse a rate window (all it reads),
    # once the whole window was seen (not just after a start).
    observed = now - trusted_span[0] if trusted_span is not None else -math.inf
    resumed_for = now - trusted_span[2] if trusted_span is not None else -math.inf
    seen_whole = observed >= down_window - _EPS or (
        bool(recorded) and now - recorded[0][0] >= down_window - _EPS
    )

    changed_at = state.changed_at if state.changed_at is None or state.changed_at <= now else None
    # After any change, let its effect reach the signals before stepping down:
    # fewer pods run fuller and slower, so the demand rises again by itself.
    cooled = changed_at is None or now - changed_at >= window
    # The arrival rate's trend, which tells a load falling for real (a day's
    # evening) from a steady one whose demand dipped. A backlog's drain is no
    # trend: refusals and bursts start it anew.
    disturbed = burst or refused_share > 0 or not signals_ok
    calm_since, arrival_trend = _track_arrivals(
        state, now, arrival, disturbed, window, auto.sync_period_seconds
    )
    falling = _arrivals_falling(arrival_trend)
    if falling:  # the kept floor is a steady load's: an evening's falls through it
        kept_pods, floor_pods = 0, guard_pods
    # The floor floor_pods comes from, when it holds any: named in the reason.
    binding = floor if guard_pods >= kept_pods else kept
    noisy = noise >= SMALL_STEP_WAIT_BAND * per_pod
    # The fleet's P95 as it is: taken once what queued before the last change,
    # burst or refusal has left the P95 window, as the guard's is.
    stirred = max((t for t in (changed_at, settled_at, calm_since) if t is not None), default=None)
    fleet_p95 = _track_fleet_p95(
        state,
        now,
        p95,
        current,
        disturbed or on_way > 0,
        since=-math.inf if stirred is None else stirred + settle,
        span=p95_span + settle,
        tau=FLEET_P95_WINDOWS * window,
    )
    # The fewest pods on which the fleet's P95, grown in proportion to the pods
    # taken away, stays within LATENCY_HEADROOM of the target. The demand
    # measured on more pods understates what fewer will hold, and a step a
    # pod too far is bought back by the guard: the P95 tells how far is too
    # far where the demand's noise cannot.
    latency_floor: int | None = None
    latency_note = ""
    if (
        fleet_p95 is not None
        and fleet_p95[2] >= LATENCY_FLOOR_FROM * p95_target
        and (level or 0.0) >= LATENCY_FLOOR_LOAD * per_pod * current
    ):
        headroom = LATENCY_HEADROOM * p95_target
        latency_floor = math.ceil(fleet_p95[2] * fleet_p95[3] / headroom - _EPS)
        latency_note = _p95_on(fleet_p95, latency_floor)
    # Little's law: requests that stay the P95 the fleet aims for (the target's
    # LATENCY_HEADROOM, as the latency floor) keep arrivals × that in flight at
    # most, as their mean stay is shorter (``arrivals_pods`` is the pods for
    # that). While they stay within it, as the window's do when its mean in
    # flight is at most that, no fleet holds more: ``little`` is then the pods
    # the arrivals need.
    stay = LATENCY_HEADROOM * p95_target
    arrivals_pods = None if arrival is None else _pods_for(arrival * stay, per_pod)
    little: int | None = None
    if arrival is not None and short_mean is not None and short_mean <= arrival * stay:
        little = arrivals_pods
    if target <= current and may_go_down and in_window and on_way == 0 and cooled:
        highest = max(n for _, n in in_window)
        # A load that collapsed (all it asked for over the last COLLAPSE_WINDOWS
        # rate windows fits in half the pods, and in COLLAPSE_MIN_PODS fewer: a
        # burst or a backlog is over) is not noise, which moves a pod or two:
        # the stabilization window need not pass. (The queue keeps suffix
        # maxima, so this is a window max too.) Not on an unknown arrival rate,
        # which bounds the step.
        span = COLLAPSE_WINDOWS * window
        lately = max((n for t, n in in_window if now - t < span), default=current)
        # Recommendations above what the arrivals can keep in flight (or the
        # current demand's pods, if more) were a backlog's, drained now, not
        # load the arrivals bring back.
        collapse_note = ""
        if little is not None and keep is not None and refused_share == 0:
            bound = max(little, keep)
            if bound < lately:
                lately, collapse_note = bound, ", backlog drained"
        collapsed = (
            arrival is not None
            and lately <= current // 2
            and current - lately >= COLLAPSE_MIN_PODS
            and highest > lately
        )
        # Short of a collapse, the window forgets a drained backlog's
        # recommendations, once it is over (refusals or a burst ended a
        # stabilization window ago or less: noise alone never forgets): they
        # held a cold start's 60 pods for two minutes after its backlog had
        # drained at 16 req/s, and its descent ran past the tenth minute.
        # None counts above this tick's (a suffix maximum is a maximum still).
        if (
            not collapsed
            and collapse_note
            and keep is not None
            and calm_since is not None
            and now - calm_since < down_window
            and highest >= BACKLOG_EXCESS * lately
            and highest - lately >= COLLAPSE_MIN_PODS
        ):
            down_queue = tuple((t, min(n, keep)) for t, n in down_queue)
            highest = min(highest, keep)  # the capped window's maximum
        if collapsed and arrival is not None:
            # The in-flight count of a fleet running far under its target
            # understates what fewer pods will hold (they run fuller and
            # slower): no lower than the arrivals need if each stays in flight
            # the P95 the fleet aims for (Little's law; most answer sooner),
            # and no higher than the window would go.
            arrivals_need = min(arrivals_pods or 0, highest)
            if arrivals_need > lately:
                highest = arrivals_need
                collapse_note += f", arrivals {arrival:.1f}/s need {arrivals_need}"
            else:
                highest = lately
        # A step of a pod or two on a noisy load is what a dip of the noise
        # looks like: it goes only as far as the highest recommendation of
        # SMALL_STEP_WAIT_WINDOWS windows allows (a fall of more pods, or any
        # on a quiet load, needs one), unless the arrivals are falling.
        waited = exempted = False
        if not collapsed and noisy and current - SMALL_STEP_PODS <= highest < current:
            longer = min(current, max(n for _, n in down_queue))
            if longer > highest and falling:
                exempted = True
            elif longer > highest:
                highest, waited = longer, True
        held = highest < floor_pods
        if held:
            highest = floor_pods
        slowed = False
        if not collapsed and latency_floor is not None and highest < latency_floor:
            highest, slowed = min(latency_floor, current), True
        # A small step whose window falls further within a rate window waits
        # for it, to go once: a window draining a pod at a time (the last of a
        # cold start's recommendations leaving it) took two scale-downs a rate
        # window apart (14 -> 13 -> 12 pods at 4 req/s).
        due: int | None = None
        if (
            not collapsed
            and noisy
            and not exempted
            and current - SMALL_STEP_PODS <= highest < current
        ):
            span_used = down_span if waited else down_window
            later = [n for t, n in down_queue if t > now - span_used + window]
            if later:
                soon = max(max(later), floor_pods, min(latency_floor or 0, current))
                if soon < highest:
                    due, highest = soon, current
        if collapsed:  # a rate window seen since the last gap, once the whole window was
            seen_enough = resumed_for >= min(window, down_window) - _EPS and seen_whole
        else:
            seen_enough = observed >= down_window - _EPS
        if highest < current and seen_enough:
            step_limit = min(
                auto.scale_down.max_pods_per_step,
                max(1, math.floor(current * auto.scale_down.max_percent_per_step / 100)),
            )
            step = measured = step_limit
            proportional: int | None = None
            if not collapsed:
                measured = min(step, max(1, math.floor(current * DESCENT_STEP_FRACTION)))
                # A small step on a noisy load waited SMALL_STEP_WAIT_WINDOWS
                # windows: measured enough, it goes at once.
                if noisy and current - highest <= SMALL_STEP_PODS:
                    measured = min(step, max(measured, current - highest))
                # Measuring each step is for the in-flight count that more pods
                # understate; down to what Little's law says the arrivals need,
                # no step needs measuring (an idle fleet of 18 took 17 steps).
                step = measured
                if little is not None:
                    step = max(measured, min(step_limit, current - little))
                # Nor down to where the fleet's P95, grown in proportion to the
                # pods taken away, stays within LATENCY_HEADROOM of the target,
                # and the in-flight count, grown with it (Little's law at the
                # same arrivals: n pods hold demand × current / n), fits n pods:
                # the model the latency floor stands on, which overstates both
                # far under the target, where the P95 is mostly the model's own
                # time. A fleet bought for a cold start's backlog took four
                # measured steps, the last ones after the load had long settled.
                if fleet_p95 is not None and short_mean is not None:
                    by_p95 = fleet_p95[2] * fleet_p95[3] / (LATENCY_HEADROOM * p95_target)
                    by_load = math.sqrt((short_mean + down_band) * current / per_pod)
                    proportional = math.ceil(max(by_p95, by_load) - _EPS)
                    step = max(step, min(step_limit, current - proportional))
            target = max(highest, current - step)
            why = "demand fell" + (", load collapsed" + collapse_note if collapsed else "")
            if little is not None and target < current - measured:
                why += f", arrivals {arrival or 0.0:.1f}/s need {little}"
            if (
                proportional is not None
                and current - proportional > measured
                and target < current - measured
            ):
                why += f", the p95 and in-flight grown x{current}/{proportional} fit {proportional}"
            why += f", step limit -{step}" if target > highest else ""
            # Once the window allows a step on a noisy load, it goes as far as
            # the demand's mean since the last change allows (with the same
            # spare): the window's highest recommendation, a high quantile of
            # the noise, would otherwise take the fleet down a pod or two at a
            # time, each step a scale-down more.
            mean_since = state.demand_since_change
            if (
                not collapsed
                and noisy
                and mean_since is not None
                and mean_since[1] - mean_since[0] >= LANDING_WINDOWS * down_window
            ):
                land = _pods_for(mean_since[2] + down_band, per_pod)
                land = max(land, floor_pods)
                if latency_floor is not None and land < latency_floor:
                    land, slowed = latency_floor, True
                if land < target and target > current - step:
                    target = max(land, current - step)
                    why += f", to the mean since the last change ({_fmt(round(mean_since[2], 1))})"
            # Near the target the P95 finds the fleet's edge where the window
            # cannot: its highest recommendation, a high quantile of the noise,
            # keeps a pod or two above the edge until a dip of the noise takes
            # them, each a scale-down more (a cold start at 16 req/s: 46 -> 45
            # pods at 620 s, -> 43 at 2,720 s). Once the window allows a step on
            # a noisy load, it goes as far as the latency floor (P95 x pods
            # hardly moves with the pods there), the guard's floor and the step
            # limit allow.
            lowest = max(latency_floor or 0, floor_pods)
            if (
                not collapsed
                and noisy
                and latency_floor is not None
                and lowest < target
                and target > current - step
            ):
                target = max(lowest, current - step)
                why += f", as far as the p95 allows: {latency_note}"
                if target > lowest:
                    why += f", step limit -{step}"
                elif floor_pods > latency_floor:
                    if binding is floor:
                        why += f", no fewer than the p95 guard's {floor_pods}"
                    else:
                        why += f", no fewer than the {floor_pods} found to hold this demand"
            if exempted and arrival_trend is not None:
                _, _, fast_rate, slow_rate = arrival_trend
                why += f", arrivals falling ({fast_rate:.2f}/s against {slow_rate:.2f}/s)"
            if slowed and target == latency_floor:
                why += f", no fewer: {latency_note}"
            # Where the latency floor stopped a step is the fewest pods found
            # to hold this demand: kept (see the kept floor above).
            pinned = (
                not collapsed
                and not falling
                and target == latency_floor
                and fleet_p95 is not None
                and fleet_p95[3] == current
            )
        elif keep is not None and keep < current:
            if highest < current:
                # Worded the same every tick it lasts: a reason that changed
                # would be a status write every tick.
                why = "stabilizing (the signals were not seen long enough since a gap)"
            elif due is not None:
                why = f"stabilizing (the window falls to {due} within {int(window)}s)"
            elif slowed:
                why = f"held: {latency_note}"
            elif held:
                assert binding is not None  # floor_pods > 0 comes from one of the floors
                if binding is floor:
                    why = f"held: p95 was over target on {binding[1] - 1} pods at demand"
                else:
                    why = f"held: {binding[1]} pods were the fewest found to hold demand"
                why += f" {_fmt(round(binding[2], 1))}"
                if floor_pods < binding[1]:
                    why += f"; {floor_pods} carry as much each at this demand"
            elif collapse_note:
                why = "held: load collapsed" + collapse_note
            elif waited:
                why = (
                    f"stabilizing (a fall of {SMALL_STEP_PODS} pods or fewer waits "
                    f"{int(down_span)}s on a load this noisy: ±{_fmt(round(noise, 1))} requests)"
                )
            else:
                why = f"stabilizing (highest in {int(down_window)}s: {highest})"

    # The one scale-down made without signals is the bound's: said so.
    outage_cap = not signals_ok and current > hi
    if not signals_ok:
        why = "; ".join(problems) + "; never scaling down"
        if outage_cap:
            why += f" but to maxReplicas={hi}"
        if target > current:
            read = (("running", running), ("waiting", waiting), ("p95", p95))
            seen = "+".join(k for k, v in read if v is not None)
            # Up only as far as this tick's readings ask: the window's samples
            # may be from before the outage (or from pods since become ready).
            asked = _pods_for(demand, per_pod) if demand is not None else 0
            target = min(target, max(current, asked, current + 1 if guarded else 0))
            if seen and target > current and current < hi:
                why += f"; up on the {seen} still seen"
        if auto.missing_signals.action == "Fallback":
            fallback = auto.missing_signals.fallback_replicas or 0
            if fallback > target:
                target = fallback
                why += f"; fallback to {fallback}"
        target = max(target, current)
    elif slow and target <= current:
        notes.append("p95 over target: no scale-down")

    # --- bounds -------------------------------------------------------------
    if demanded > hi and target >= hi:
        limited = f"maxReplicas={hi} reached"
        if target > hi and not outage_cap:
            why += f"; capped at maxReplicas={hi}"
    elif target > hi and not outage_cap:
        why += f"; maxReplicas={hi}"
    target = min(target, hi)
    if target < lo:
        target = lo
        # A floor raised over the fleet is what moves it: said first.
        why = f"up to minReplicas={lo}; {why}" if lo > current else f"{why}; minReplicas={lo}"

    reason = f"{label} → {target} pods ({why})"
    if notes:
        reason += " [" + "; ".join(notes) + "]"

    # The demand the fleet ran since its last change (a rate window after it
    # at least), where it fell short if this tick buys pods.
    ran = state.demand_since_change
    if guarded and target > current and level is not None:
        # At that demand, if lower: the window's mean is swollen by what made
        # the P95 miss (slower answers hold more in flight, a queue), and the
        # floor was forgotten as soon as that had passed (13 -> 12 pods at 4
        # req/s, 925 s after the guard bought the 13th back).
        floor = (now, target, level if ran is None else min(level, ran[2]))
    # The kept floor: where a scale-down stopped at the latency floor, or the
    # pods bought back on the demand when a remembered floor's fleet (or
    # fewer) fell short. The demand the fleet that fell short ran is a queue's,
    # higher than the floor's fleet ran: the floor's own is kept, or the
    # share would take the pods bought back away again. With no floor
    # remembered, a pod or two a steady load's demand buys are kept too, at
    # the demand the fleet ran since its last change: the fleet they were
    # bought for fell short of it, and would again. Only a fleet that ran a
    # while fell short: the steps of a rise that follow each other, each
    # before the last one's fleet was measured, are the load's. So are more
    # pods bought at once, unless the arrivals of an open load did not rise
    # with its demand: a clump of slow answers (a queue, so more in flight)
    # bought 3 pods at 10 req/s, and the window took them back 160 s later,
    # a scale-down more on a steady load (28 -> 31 -> 28 pods). A closed loop's
    # arrivals are its answers, which a full fleet holds down as its users
    # rise: not told apart. An open load by the ten-minute mean of its spread,
    # which one window's (a median of two dozen steps) passes and misses.
    open_load = noise_spread is not None and noise_spread[2] >= OPEN_LOAD_SPREAD
    if level is not None and pinned and target < current:
        kept = (now, target, level)
    elif level is not None and on_demand and target > current and ran is not None:
        short = [f[2] for f in (floor, kept) if f is not None and current <= f[1]]
        if short:
            kept = (now, target, min(level, *short))
        elif not falling and (
            target - current <= SMALL_STEP_PODS
            or (open_load and _arrivals_steady(arrival_trend, arrival, window))
        ):
            kept = (now, target, min(level, ran[2]))

    # The demand's mean since the last change, its first rate window left out
    # (fewer pods take that long to run fuller): where a scale-down lands.
    since_change = state.demand_since_change
    if target != current or (since_change is not None and since_change[1] > now):
        since_change = None
    elif demand is not None and demand_complete and signals_ok and cooled:
        since_change = _advanced(since_change, now, demand, LEVEL_SECONDS, digits=3)
    new_state = PolicyState(
        down=down_queue,
        up=up_queue,
        demand=recorded,
        p95=p95_samples,
        settled_at=now if target > current or burst else settled_at,
        changed_at=now if target != current else changed_at,
        queued_at=(state.queued_at if waiting is None else now if waiting > 0 else None),
        guard_floor=floor,
        kept_floor=kept,
        demand_since_change=since_change,
        calm_since=calm_since,
        arrival_trend=arrival_trend,
        fleet_p95=fleet_p95,
        noise_mean=noise_mean,
        noise_spread=noise_spread,
        trusted=trusted_span,
        read_at=read_at if read_at is not None and new_read else state.read_at,
    )
    return _decision(
        target,
        current,
        reason,
        new_state,
        signals_ok=signals_ok,
        limited=limited,
        signal_problems="; ".join(problems) or None,
    )
