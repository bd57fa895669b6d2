"""cgsnap.concurrency: the adaptive create-concurrency controller, on a fake
clock and simulated servers; the gate with real threads; the HTTP pool size."""

import heapq
import http.server
import logging
import threading
import time

import pytest

from cgsnap import concurrency


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def simulate(ctl, calls, server):
    """Drive ``ctl`` through ``calls`` calls on a simulated server (fake clock).

    ``server``: "parallel" (every call takes 0.1 s, however many run) or
    "shared" (one CPU shared by the calls in flight, 0.1 s of work each:
    processor sharing, like an eventlet cinder-api with one worker).
    Returns (total time, [limit at each launch]).
    """
    clock = ctl.clock
    active = {}   # id -> [remaining work, started, peak in flight]
    done_at = []  # parallel: heap of (end, id)
    launched, finished, limits, next_id = 0, 0, [], 0

    def launch():
        nonlocal launched, next_id
        while launched < calls and len(active) < ctl.limit:
            limits.append(ctl.limit)
            active[next_id] = [0.1, clock.now, 0]
            if server == "parallel":
                heapq.heappush(done_at, (clock.now + 0.1, next_id))
            next_id += 1
            launched += 1
            for a in active.values():
                a[2] = max(a[2], len(active))

    launch()
    while finished < calls:
        if server == "parallel":
            end, cid = heapq.heappop(done_at)
        else:
            n = len(active)
            cid = min(active, key=lambda k: active[k][0])
            end = clock.now + active[cid][0] * n
            for a in active.values():
                a[0] -= active[cid][0] if a is not active[cid] else 0
            active[cid][0] = 0
        clock.now = end
        _, started, peak = active.pop(cid)
        finished += 1
        ctl.observe(started, end - started, peak)
        launch()
    return clock.now, limits


def test_parallel_server_grows_to_the_ceiling():
    ctl = concurrency.Controller(64, start=4, clock=FakeClock())
    total, limits = simulate(ctl, 16, "parallel")
    assert limits[:4] == [4, 4, 4, 4]
    assert total == pytest.approx(0.3)  # slow start: 4, then 8, then the last 4
    simulate(ctl, 200, "parallel")
    assert ctl.limit == 64


def test_shared_server_settles_at_a_few():
    ctl = concurrency.Controller(64, start=4, clock=FakeClock())
    simulate(ctl, 300, "shared")
    assert 2 <= ctl.limit <= 8
    _, limits = simulate(ctl, 100, "shared")
    assert max(limits) <= 8


def test_jitter_of_a_few_per_cent_is_not_queueing_at_a_large_limit():
    clock = FakeClock()
    ctl = concurrency.Controller(64, start=64, clock=clock)
    ctl.observe(0.0, 0.100, 64)
    for i in range(50):
        clock.now = i + 1.0
        ctl.observe(clock.now, 0.100 + 0.008 * (i % 2), 64)  # +8 %: Vegas alone reads 5 queued
    assert ctl.limit == 64
    # ... nor is 30 % at 64 in flight (thread wake-ups in a busy client): it holds.
    ctl.observe(100.0, 0.130, 64)
    assert ctl.limit == 64


def test_a_base_from_idle_times_does_not_pin_a_busy_endpoint_to_the_floor():
    clock = FakeClock()
    ctl = concurrency.Controller(64, start=2, clock=clock)
    ctl.observe(0.0, 0.05, 1)            # idle: 50 ms alone
    clock.now = 1.0
    ctl.observe(1.0, 0.50, 3)            # busy: halved back to the floor
    for _ in range(4):
        ctl.observe(2.0, 0.20, 2)        # 200 ms at 2: 4x the idle base, stays at 2
    assert ctl.limit == 2
    for _ in range(16):
        ctl.observe(2.0, 0.20, 2)        # the base is now the busy floor's 200 ms ...
    assert ctl.base == pytest.approx(0.20)
    assert ctl.limit > 2                 # ... and against it there is no queueing: grows


def test_decrease_once_per_round_trip():
    clock = FakeClock()
    ctl = concurrency.Controller(64, start=16, decrease=0.5, clock=clock)
    ctl.observe(0.0, 0.1, 1)          # base 0.1 s
    clock.now = 1.0
    assert ctl.observe(0.5, 0.5, 16) == 8   # queued 12.8 -> halve
    # Calls started before that decrease saw the old limit: no second halving.
    assert ctl.observe(0.6, 0.5, 16) == 8
    assert ctl.observe(1.1, 0.5, 16) == 4
    # The default decrease is gentler (0.7): 6 -> 4, not 3, at the small limits
    # a CPU-bound API wants.
    ctl = concurrency.Controller(64, start=6, clock=clock)
    ctl.observe(0.0, 0.1, 1)
    assert ctl.observe(2.0, 0.5, 6) == 4


def test_hold_between_thresholds_and_growth_needs_a_used_limit():
    clock = FakeClock()
    ctl = concurrency.Controller(64, start=4, decrease=0.5, clock=clock)
    ctl.observe(0.0, 0.1, 1)
    assert ctl.limit == 4               # a call alone says nothing about 4
    ctl.observe(0.0, 0.1, 4)
    assert ctl.limit == 5               # slow start: +1
    assert ctl.observe(0.0, 0.15, 4) == 5   # queued 1.33, 1.5x: hold
    clock.now = 1.0
    assert ctl.observe(0.5, 0.4, 8) == 2    # queued 5.25, 4x: halve; slow start ends
    assert ctl.slow_start is False
    # At the floor the base is re-learnt from calls at the floor: 120 ms.
    assert ctl.observe(2.0, 0.12, 2) == 3   # flat at the floor: +1
    assert ctl.observe(2.0, 0.1, 1) == 3    # a call alone says nothing about 3
    assert ctl.observe(2.0, 0.17, 3) == 3   # 1.4x, queued 0.67: +1/3 only
    assert ctl.observe(2.0, 0.125, 3) == 4  # flat: +1 per call


def test_limit_stays_within_floor_and_ceiling():
    clock = FakeClock()
    ctl = concurrency.Controller(6, start=10, floor=2, clock=clock)
    assert ctl.limit == 6
    ctl.observe(0.0, 0.01, 1)
    for i in range(10):
        clock.now = i + 1.0
        ctl.observe(clock.now, 10.0, 6)
    assert ctl.limit == 2
    ctl.set_ceiling(1)
    assert ctl.limit == 1
    # Never fewer than 2 by default (1 leaves the API idle between requests),
    # unless the ceiling says so.
    assert concurrency.Controller(64, start=1).limit == 2
    assert concurrency.Controller(1, start=1).limit == 1


def test_for_endpoint_remembers_per_endpoint():
    concurrency.forget()
    try:
        a = concurrency.for_endpoint("http://a/v3", 64, start=3)
        assert concurrency.for_endpoint("http://a/v3", 64) is a
        b = concurrency.for_endpoint("http://b/v3", 64, start=3)
        assert b is not a
        a.observe(0.0, 0.1, 3)
        assert a.limit == 4 and b.limit == 3
        assert concurrency.for_endpoint("http://a/v3", 2).limit == 2
    finally:
        concurrency.forget()


def test_gate_bounds_calls_in_flight_and_feeds_the_controller():
    ctl = concurrency.Controller(64, start=3, grow_below=0, grow_rise=0, shrink_above=1e9)
    gate = concurrency.Gate(ctl)
    threads = [threading.Thread(target=gate.call, args=(time.sleep, 0.05)) for _ in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.max_in_flight == 3
    assert ctl.samples == 9
    assert gate.limits() == [3] * 9


def test_gate_does_not_start_a_call_after_its_deadline():
    ctl = concurrency.Controller(1, start=1)
    gate = concurrency.Gate(ctl)
    called = []
    hold = threading.Thread(target=gate.call, args=(time.sleep, 0.3))
    hold.start()
    time.sleep(0.05)
    with pytest.raises(concurrency.NotStarted):
        gate.call(called.append, 1, deadline=time.monotonic() + 0.05)
    hold.join()
    with pytest.raises(concurrency.NotStarted):
        gate.call(called.append, 2, deadline=time.monotonic() - 1)
    assert called == []
    assert gate.in_flight == 0


def test_failed_call_is_not_a_latency_sample():
    ctl = concurrency.Controller(8, start=2)
    gate = concurrency.Gate(ctl)
    with pytest.raises(ZeroDivisionError):
        gate.call(lambda: 1 / 0)
    assert ctl.samples == 0 and gate.in_flight == 0


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(0.05)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_connection_pool_sized_to_the_creates(caplog):
    """16 parallel requests on a keystoneauth session sized for 16 keep
    every connection (requests' default pool of 10 logs 'Connection pool is
    full, discarding connection')."""
    from keystoneauth1 import session as ks_session

    from cgsnap.drivers import cinder

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        sess = ks_session.Session()
        cinder.size_connection_pool(sess, 16)
        assert sess.session.get_adapter(url)._pool_maxsize == 16
        assert isinstance(sess.session.get_adapter(url), ks_session.TCPKeepAliveAdapter)
        caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
        threads = [threading.Thread(target=sess.get, args=(url,), kwargs={"authenticated": False})
                   for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
    finally:
        server.shutdown()
        server.server_close()


# -- the per-volume cut (SnapshotVolumes) on the fake backend -------------------------------

@pytest.fixture
def cold_controller():
    from cgsnap.conf import CONF
    concurrency.forget()
    yield CONF
    concurrency.forget()
    CONF.clear_override("adaptive_creates_start", group="snapshot")
    CONF.clear_override("adaptive_creates", group="snapshot")
    CONF.clear_override("max_parallel_creates", group="snapshot")


def test_per_volume_cut_starts_cold_and_reports_its_concurrency(make_guest, cold_controller,
                                                                 caplog):
    from cgsnap import api
    from cgsnap.tasks import volume as volume_tasks

    cold_controller.set_override("adaptive_creates_start", 2, group="snapshot")
    g = make_guest(n_volumes=8, create_cost=0.05)
    caplog.set_level(logging.INFO, logger="cgsnap.tasks.volume")
    doc = api.create_snapshot_set(g.name)
    assert doc["status"] == "available"
    seen = dict(volume_tasks.last_cut_concurrency)
    assert len(seen["limits"]) == 9 and seen["limits"][0] == 2   # root + 8, cold start 2
    assert 2 <= seen["max_in_flight"] < 9                     # grew, but not all at once
    assert any("per-volume cut: 9 creates" in r.getMessage() for r in caplog.records)
    # The next run in this process starts where this one left off.
    api.create_snapshot_set(g.name)
    assert volume_tasks.last_cut_concurrency["limits"][0] == seen["limit_after"]


def test_fixed_concurrency_sends_every_create_at_once(make_guest, cold_controller):
    from cgsnap import api
    from cgsnap.tasks import volume as volume_tasks

    cold_controller.set_override("adaptive_creates", False, group="snapshot")
    g = make_guest(n_volumes=5, create_cost=0.05)
    api.create_snapshot_set(g.name)
    assert volume_tasks.last_cut_concurrency["max_in_flight"] == 6


def test_creates_queued_past_the_freeze_deadline_are_never_made(make_guest, cold_controller):
    """A create waiting for a slot when the freeze deadline passes is not
    sent (the guard may have thawed): the cut fails naming it, and every
    snapshot that was made is deleted."""
    from cgsnap import api, exception

    cold_controller.set_override("max_parallel_creates", 1, group="snapshot")
    g = make_guest(n_volumes=5, create_cost=0.4)
    with pytest.raises(exception.WindowTimeout, match="did not finish inside the freeze"):
        api.create_snapshot_set(g.name, timeout=0.6)
    time.sleep(0.5)  # a create already sent finishes; nothing new may start
    assert g.backend.calls["create"] <= 2  # at 0 s and 0.4 s; not the other 4
    assert g.frozen_count() == 0
    assert [s for s in g.backend.snapshots.values() if s["status"] != "deleting"] == []
