"""The processor-sharing latency model against its closed forms."""

from __future__ import annotations

import random
import statistics

import pytest
from vlm_operator.latency import LatencyModel, ProcessorSharing


def _run_to_empty(pod: ProcessorSharing[int], limit: int = 10_000) -> dict[int, float]:
    finished: dict[int, float] = {}
    for _ in range(limit):
        nxt = pod.next_completion()
        if nxt is None:
            return finished
        at, _key = nxt
        for key in pod.advance(at):
            finished[key] = at
    raise AssertionError("pod did not drain")


def test_one_request_alone_takes_exactly_its_work() -> None:
    pod: ProcessorSharing[int] = ProcessorSharing(alpha=0.185)
    pod.admit(1, 6.2, now=100.0)
    assert pod.next_completion() == (106.2, 1)
    assert pod.advance(106.1) == []
    assert pod.advance(106.2) == [1]
    assert len(pod) == 0
    assert pod.next_completion() is None


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_n_equal_requests_finish_at_work_times_slowdown(n: int) -> None:
    model = LatencyModel()
    pod: ProcessorSharing[int] = ProcessorSharing(alpha=model.alpha)
    for key in range(n):
        pod.admit(key, 6.2, now=0.0)
    finished = _run_to_empty(pod)
    assert sorted(finished) == list(range(n))
    for at in finished.values():
        assert at == pytest.approx(6.2 * (1 + 0.185 * (n - 1)), rel=1e-12)


@pytest.mark.parametrize(("n", "mean"), [(2, 7.3), (4, 9.6), (8, 14.2), (16, 23.4)])
def test_calibrated_means(n: int, mean: float) -> None:
    assert LatencyModel().mean_latency(n) == pytest.approx(mean, abs=0.06)


def test_slowdown_rate_changes_when_requests_enter_and_leave() -> None:
    # A alone for 2 s (2 s of work done), then B joins: both run at 1/1.5.
    pod: ProcessorSharing[str] = ProcessorSharing(alpha=0.5)
    pod.admit("a", 4.0, now=0.0)
    pod.admit("b", 1.0, now=2.0)
    # B needs 1 s of work at rate 1/1.5 → finishes at 3.5; A has 2 - 1 = 1 s left.
    assert pod.next_completion() == pytest.approx((3.5, "b"))
    assert pod.advance(3.5) == ["b"]
    # A is alone again: 1 s of work left.
    assert pod.next_completion() == pytest.approx((4.5, "a"))


def test_removed_request_frees_its_share() -> None:
    pod: ProcessorSharing[str] = ProcessorSharing(alpha=1.0)
    pod.admit("a", 2.0, now=0.0)
    pod.admit("b", 100.0, now=0.0)
    assert pod.remove("b", now=1.0)  # a did 0.5 s of work at half speed
    assert not pod.remove("b", now=1.0)
    assert len(pod) == 1
    assert pod.next_completion() == pytest.approx((2.5, "a"))
    assert pod.advance(10.0) == ["a"]


def test_finish_order_is_by_remaining_work() -> None:
    pod: ProcessorSharing[int] = ProcessorSharing(alpha=0.185)
    works = {0: 9.0, 1: 3.0, 2: 6.0, 3: 1.0}
    for key, work in works.items():
        pod.admit(key, work, now=0.0)
    finished = _run_to_empty(pod)
    assert sorted(finished, key=finished.__getitem__) == [3, 1, 2, 0]


def test_readmitting_a_removed_key_uses_its_new_work() -> None:
    pod: ProcessorSharing[str] = ProcessorSharing(alpha=0.0)
    pod.admit("a", 1.0, now=0.0)
    pod.admit("x", 10.0, now=0.0)
    pod.remove("a", now=0.5)
    pod.admit("a", 5.0, now=0.5)
    assert pod.advance(5.4) == []
    assert pod.advance(5.5) == ["a"]


def test_sample_work_is_lognormal_around_base_and_scaled() -> None:
    model = LatencyModel(time_scale=10.0)
    rng = random.Random(7)
    samples = [model.sample_work(rng) for _ in range(4000)]
    assert statistics.median(samples) == pytest.approx(0.62, rel=0.02)
    assert statistics.pstdev(samples) / statistics.fmean(samples) == pytest.approx(0.1, rel=0.1)
    assert LatencyModel(sigma=0.0).sample_work(rng) == 6.2


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        LatencyModel(time_scale=0)
    with pytest.raises(ValueError, match="base_seconds"):
        LatencyModel(base_seconds=-1)
    pod: ProcessorSharing[int] = ProcessorSharing()
    with pytest.raises(ValueError, match="work"):
        pod.admit(1, float("nan"), now=0.0)
    pod.admit(1, 1.0, now=0.0)
    with pytest.raises(KeyError):
        pod.admit(1, 1.0, now=0.0)
