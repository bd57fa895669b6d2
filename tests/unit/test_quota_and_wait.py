"""The quota pre-check's cache (cgsnap.quota) and the poller's backpressure
(cgsnap.wait)."""

import time

import pytest

from cgsnap import exception, quota, wait


class Limits:
    """A volume backend reduced to ``get_limits``, counting the calls."""

    def __init__(self, snapshots_max=10, gigabytes_max=100, snapshots_used=0, gigabytes_used=0):
        self.answer = {"snapshots_max": snapshots_max, "snapshots_used": snapshots_used,
                       "gigabytes_max": gigabytes_max, "gigabytes_used": gigabytes_used}
        self.calls = 0

    def get_limits(self):
        self.calls += 1
        return dict(self.answer)


@pytest.fixture(autouse=True)
def _forget():
    quota.forget()
    yield
    quota.forget()


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(quota.time, "monotonic", lambda: now[0])
    return now


def test_first_set_asks_cinder_and_the_next_reuses_the_answer(clock):
    b = Limits()
    assert quota.check(b, 3, 30, cache_seconds=10) == "fresh"
    clock[0] += 5
    assert quota.check(b, 3, 30, cache_seconds=10) == "cached"
    assert b.calls == 1


def test_claims_count_against_the_cached_answer_and_a_refusal_is_always_fresh(clock):
    b = Limits(snapshots_max=10)
    quota.check(b, 4, 1, cache_seconds=10)
    quota.check(b, 4, 1, cache_seconds=10)          # cached: 8 of 10 claimed
    assert b.calls == 1
    b.answer["snapshots_used"] = 8                   # Cinder now agrees
    with pytest.raises(exception.Refused, match=r"snapshots quota too low: this set needs 4, "
                                                r"2 of 10 left"):
        quota.check(b, 4, 1, cache_seconds=10)
    assert b.calls == 2                              # the refusal asked Cinder again


def test_a_set_the_cache_would_refuse_is_accepted_when_cinder_has_room_again(clock):
    b = Limits(snapshots_max=10)
    quota.check(b, 6, 1, cache_seconds=10)
    b.answer["snapshots_used"] = 0                   # the first set was deleted meanwhile
    assert quota.check(b, 6, 1, cache_seconds=10) == "fresh"
    assert b.calls == 2


def test_the_answer_expires(clock):
    b = Limits()
    quota.check(b, 1, 1, cache_seconds=10)
    clock[0] += 10.5
    assert quota.check(b, 1, 1, cache_seconds=10) == "fresh"
    assert b.calls == 2


def test_zero_seconds_asks_every_time(clock):
    b = Limits()
    for _ in range(3):
        assert quota.check(b, 1, 1, cache_seconds=0) == "fresh"
    assert b.calls == 3


def test_gigabytes_and_unlimited_caps(clock):
    b = Limits(snapshots_max=-1, gigabytes_max=50, gigabytes_used=45)
    with pytest.raises(exception.Refused,
                       match="gigabytes quota too low: this set needs 6, 5 of 50"):
        quota.check(b, 100, 6, cache_seconds=10)
    assert quota.check(Limits(snapshots_max=-1, gigabytes_max=-1), 10**6, 10**6, 10) == "fresh"


def test_each_backend_has_its_own_answer(clock):
    a, b = Limits(), Limits()
    quota.check(a, 1, 1, cache_seconds=10)
    quota.check(b, 1, 1, cache_seconds=10)
    assert (a.calls, b.calls) == (1, 1)


def _gaps_between_slow_polls():
    """Poll 4 times with a fetch that takes 60 ms; the idle gaps between polls."""
    starts, ends = [], []

    def fetch():
        starts.append(time.monotonic())
        time.sleep(0.06)
        ends.append(time.monotonic())
        return len(starts)

    wait.poll(fetch, lambda n: n >= 4, deadline_s=10, initial=0.001, maximum=0.002)
    return [s - e for e, s in zip(ends, starts[1:])]


def test_the_poller_waits_at_least_as_long_as_the_last_poll_took():
    """A slow answer (a loaded server) stretches the interval beyond the
    configured backoff: no poll starts sooner than the previous one took."""
    gaps = _gaps_between_slow_polls()
    assert len(gaps) == 3 and min(gaps) >= 0.055, gaps


def test_the_poller_keeps_its_fast_start_when_answers_are_quick():
    starts = []
    wait.poll(lambda: starts.append(time.monotonic()) or len(starts), lambda n: n >= 3,
              deadline_s=10, initial=0.01, maximum=0.02)
    assert starts[1] - starts[0] < 0.2  # not stretched by anything but the backoff
