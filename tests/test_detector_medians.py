"""StepWindow (rules/steps.py): the burst and pressure_drop medians kept incrementally must equal
``statistics.median`` of the same readings at every step."""

from __future__ import annotations

import random
import statistics
from collections import deque

import pytest

from services.detector.rules.steps import StepWindow


def _reference(q: deque[tuple[float, float]], n: int, min_base: int = 3) -> tuple[float | None, float | None]:
    if len(q) < n + min_base:
        return None, None
    vals = [v for _, v in q]
    return statistics.median(vals[-n:]), statistics.median(vals[:-n])


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_medians_equal_statistics_median_at_every_step(seed: int, n: int) -> None:
    rng = random.Random(seed)
    w, ref = StepWindow(n), deque()
    t, keep = 0.0, 20.0
    pool = [rng.uniform(-5, 5) for _ in range(6)] + [0.0, -0.0, 1, 2.5]  # few distinct values: many duplicates
    checked = 0
    for _ in range(3000):
        t += rng.choice([0.5, 1.0, 1.0, 3.0, 7.0])  # irregular arrivals and gaps
        if rng.random() < 0.01:
            keep = rng.uniform(2.0, 60.0)  # the window shrinks or grows
        v = rng.choice(pool) if rng.random() < 0.6 else round(rng.gauss(0, 3), rng.choice([0, 1, 6]))
        w.append(t, v)
        ref.append((t, v))
        horizon = t - keep
        w.evict(horizon)
        while ref and ref[0][0] <= horizon:
            ref.popleft()
        if rng.random() < 0.002:
            w.clear()
            ref.clear()
        assert len(w) == len(ref)
        assert w.base == sorted(v for _, v in list(ref)[:-n])
        got, want = w.medians(), _reference(ref, n)
        assert got == want
        # the same object among equal values (0.0 and -0.0, 1 and 1.0): identical, not just equal
        assert [repr(x) for x in got] == [repr(x) for x in want]
        checked += want[0] is not None
    assert checked > 500  # the windows were long enough to have medians most of the time


def test_even_and_odd_baselines() -> None:
    w = StepWindow(3)
    for i, v in enumerate([4.0, 1.0, 3.0, 2.0, 9.0, 8.0, 7.0]):
        w.append(float(i), v)
    assert w.medians() == (8.0, 2.5)  # level [9, 8, 7]; baseline [4, 1, 3, 2]: even, the mean of 2 and 3
    w.append(7.0, 6.0)
    assert w.medians() == (7.0, 3.0)  # baseline [4, 1, 3, 2, 9]
    w.evict(0.0)  # drops 4.0
    assert w.medians() == (7.0, 2.5)  # baseline [1, 3, 2, 9]
    w.evict(1.0)  # drops 1.0
    assert w.medians() == (7.0, 3.0)  # baseline [3, 2, 9]


def test_too_few_baseline_readings() -> None:
    w = StepWindow(3)
    for i in range(5):
        w.append(float(i), float(i))
    assert w.medians() == (None, None)
    w.append(5.0, 5.0)
    assert w.medians() == (4.0, 1.0)
