"""Adaptive concurrency for the per-volume creates inside the freeze window.

How many creates should be in flight at once depends on the cloud: a
cinder-api with many workers answers 16 parallel creates as fast as one, a
CPU-bound single worker answers them one after another, and then every
request past the first few only queues (and costs the API more CPU in
contention than it saves).  No fixed number is right for both, so the number
is learned from what the endpoint shows: the latency of the create call.

:class:`Controller` is a delay-based additive-increase /
multiplicative-decrease limit (TCP Vegas's estimate).  Each finished call
reports its latency ``rtt`` and the most calls that were in flight while it
ran, ``c``.  With ``base`` the lowest latency seen on the endpoint, or, once there are
any, the lowest of the last 16 calls made at the floor (an idle-time base
would pin a busy endpoint to the floor; calls at the floor are comparable,
and a base from them cannot creep up with the limit),

    queued = c * (1 - base * (1 + tolerance) / rtt)

estimates how many of those ``c`` calls were waiting in the server rather
than being served (``tolerance`` keeps jitter of a few per cent at a large
``c`` from reading as queueing).

* grow: while ``queued < grow_below``, or the latency is within
  ``grow_rise`` (1.2x) of ``base``; by 1 per call in the slow start of a
  cold controller or while the latency stays flat, else by 1 per limit's
  worth of calls; only on calls that used at least half the limit;
* shrink: once ``queued > shrink_above`` and the latency is over
  ``shrink_rise`` (1.5x) ``base`` (a count alone would read 10 % of thread
  jitter at 64 in flight as 6 queued): the limit is multiplied by
  ``decrease``, at most once per round trip (only calls started after the
  last decrease count against it); this ends the slow start;
* otherwise hold.  The limit stays within ``[floor, ceiling]``.

:class:`Gate` bounds the calls in flight by a controller's limit and feeds
it the latencies; :func:`for_endpoint` keeps one controller per endpoint for
the life of the process (a service or a bench warms it; a cron run starts it
cold at ``start``).

Pure: no I/O; the clock is injectable (tests use a fake one).
"""

import collections
import threading
import time

COLD_START = 4
FLOOR = 2  # one create at a time leaves the API idle between requests


class NotStarted(Exception):
    """A gated call did not get a slot before its deadline and was not made."""


class Controller:
    """The concurrency limit for one endpoint (see the module docstring)."""

    def __init__(self, ceiling, start=COLD_START, floor=FLOOR, grow_below=1.0,
                 shrink_above=2.0, decrease=0.7, tolerance=0.1, shrink_rise=1.5,
                 grow_rise=1.2, clock=time.monotonic):
        if ceiling < 1 or floor < 1:
            raise ValueError("ceiling and floor must be >= 1")
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.grow_below = grow_below
        self.shrink_above = shrink_above
        self.decrease = decrease
        self.tolerance = tolerance
        self.shrink_rise = shrink_rise
        self.grow_rise = grow_rise
        self.clock = clock
        self._limit = float(self._clamp(start))
        self.base = None            # see the module docstring (s)
        self._lowest = None         # lowest latency seen (s)
        self._at_floor = collections.deque(maxlen=16)  # latencies of calls at the floor
        self.slow_start = True      # grow by 1 per call until the first decrease
        self._last_decrease = None  # clock value of the last decrease
        self.samples = 0
        self._lock = threading.Lock()

    def _clamp(self, value):
        return max(self.floor, min(self.ceiling, value))

    @property
    def limit(self):
        """Calls allowed in flight now (an integer in [floor, ceiling])."""
        return int(self._clamp(self._limit) + 1e-9)

    def set_ceiling(self, ceiling):
        with self._lock:
            self.ceiling = max(1, ceiling)
            self.floor = min(self.floor, self.ceiling)
            self._limit = self._clamp(self._limit)

    def observe(self, started, latency, in_flight):
        """One finished call: started at ``started`` (clock), took ``latency``
        seconds, and shared the endpoint with at most ``in_flight`` calls
        (itself included).  Returns the new limit."""
        with self._lock:
            self.samples += 1
            latency = max(latency, 1e-6)
            if self._lowest is None or latency < self._lowest:
                self._lowest = latency
            if in_flight <= self.floor and self.limit <= self.floor:
                self._at_floor.append(latency)
            self.base = min(self._at_floor) if self._at_floor else self._lowest
            queued = in_flight * max(0.0, 1.0 - self.base * (1.0 + self.tolerance) / latency)
            rise = latency / self.base
            if queued > self.shrink_above and rise > self.shrink_rise:
                if self._last_decrease is None or started >= self._last_decrease:
                    self._limit = self._clamp(self._limit * self.decrease)
                    self._last_decrease = self.clock()
                self.slow_start = False
            elif (queued < self.grow_below or rise < self.grow_rise) \
                    and 2 * in_flight >= self.limit:
                # Grow only when the limit was at least half in use (a call
                # made alone says nothing about a limit of 8; while the limit
                # grows, calls lag behind it): by 1 per call in slow start or
                # while the latency stays flat, else by 1 per limit's worth.
                flat = rise < self.grow_rise
                step = 1.0 if self.slow_start or flat else 1.0 / max(self._limit, 1.0)
                self._limit = self._clamp(self._limit + step)
            return self.limit

    def state(self):
        return {"limit": self.limit, "base_s": self.base, "slow_start": self.slow_start,
                "samples": self.samples, "ceiling": self.ceiling}


class Gate:
    """Bounds concurrent calls by ``controller.limit``; reports each call's
    latency to it.  Records the limit each call started under (``trace``)."""

    def __init__(self, controller):
        self.controller = controller
        self.clock = controller.clock
        self._cond = threading.Condition()
        self.in_flight = 0
        self.max_in_flight = 0
        self.trace = []  # (started, limit at start, in flight at start)
        self._active = []  # [peak in flight] of each call in flight

    def call(self, fn, *args, deadline=None, **kwargs):
        """``fn(*args, **kwargs)`` once a slot is free.  ``deadline`` (clock):
        raise :class:`NotStarted` instead of calling if no slot is free by then."""
        with self._cond:
            while self.in_flight >= self.controller.limit:
                timeout = None if deadline is None else deadline - self.clock()
                if timeout is not None and timeout <= 0:
                    raise NotStarted("no free slot before the deadline")
                self._cond.wait(timeout)
            if deadline is not None and self.clock() >= deadline:
                raise NotStarted("the deadline passed before the call")
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            # The most calls in flight at any time during this call: what it
            # shared the server with (a burst's first call is not alone).
            me = [self.in_flight]
            for other in self._active:
                other[0] = max(other[0], self.in_flight)
            self._active.append(me)
            started = self.clock()
            self.trace.append((started, self.controller.limit, self.in_flight))
        ok = False
        try:
            result = fn(*args, **kwargs)
            ok = True
            return result
        finally:
            ended = self.clock()
            with self._cond:
                self.in_flight -= 1
                self._active = [a for a in self._active if a is not me]
                if ok:  # a failed call's latency says nothing about load
                    self.controller.observe(started, ended - started, me[0])
                self._cond.notify_all()

    def limits(self):
        """The limit each call started under, in order."""
        return [limit for _, limit, _ in sorted(self.trace)]


_controllers = {}
_registry_lock = threading.Lock()


def for_endpoint(key, ceiling, start=COLD_START):
    """The process's controller for endpoint ``key`` (created cold at
    ``start``); its ceiling follows ``ceiling``."""
    with _registry_lock:
        ctl = _controllers.get(key)
        if ctl is None:
            ctl = _controllers[key] = Controller(ceiling, start=start)
        elif ctl.ceiling != ceiling:
            ctl.set_ceiling(ceiling)
        return ctl


def forget():
    """Drop every endpoint's controller (tests; a bench's cold start)."""
    with _registry_lock:
        _controllers.clear()
