"""The progress line's ETA: remaining networks x median seconds per trained network of this run."""

import io

import pytest

from search.progress import Progress, format_eta


@pytest.mark.parametrize("seconds, text", [
    (None, "eta --"), (0, "eta 0s"), (-3, "eta 0s"), (42.4, "eta 42s"), (59.6, "eta 1m00s"),
    (185, "eta 3m05s"), (3599, "eta 59m59s"), (3600, "eta 1h00m"), (7625, "eta 2h07m"),
])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def counts(trained, **free):
    return {"trained": trained, "reused": 0, "over_budget": 0, "out_of_memory": 0, "failed": 0, **free}


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_eta_is_remaining_times_the_median_interval_between_trained_trial_ends():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, stream=out, clock=clock)
    p.start(2)  # a resumed study: 2 trained before this run, which count for nothing here
    assert p.eta_s() is None and "eta --" in p._line()

    clock.t += 30  # a free proposal (reused) ends: no trained network, no estimate yet
    p.pareto(1, counts(2, reused=1))
    assert p.eta_s() is None

    clock.t += 10  # the first trained network of this run: 40 s since the start, free trial included
    p.pareto(1, counts(3, reused=1))
    assert p.eta_s() == pytest.approx(7 * 40)
    assert "[3/10 trained, 1 reused | pareto 1 | 00:40 | eta 4m40s]" in out.getvalue()

    clock.t += 20
    p.pareto(2, counts(4, reused=1))
    assert p.eta_s() == pytest.approx(6 * 30)  # median of 40, 20

    clock.t += 60  # two trained at once (other workers'): 30 s each
    p.pareto(2, counts(6, reused=1))
    assert p.per_trained == [40, 20, 30, 30]
    assert p.eta_s() == pytest.approx(4 * 30)

    clock.t += 5  # a failed trial changes nothing
    p.pareto(2, counts(6, reused=1, failed=1))
    assert p.eta_s() == pytest.approx(4 * 30)


def test_eta_is_zero_once_the_target_is_reached():
    clock = Clock()
    p = Progress(2, stream=io.StringIO(), clock=clock)
    p.start(0)
    for _ in range(3):  # one more than asked (another worker finished the last one too)
        clock.t += 5
        p.pareto(1, counts(p.done + 1))
    assert p.eta_s() == 0 and "eta 0s" in p._line()
