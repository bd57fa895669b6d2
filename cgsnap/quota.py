"""The quota pre-check: refuse, before the guest is frozen, a set that cannot
fit in the project's Cinder snapshot quota.

The check is advisory.  Cinder enforces its quota atomically when each
snapshot is created; between any check and the creates another client can
use the quota up, and Cinder then refuses a create inside the window and the
set is reverted.  What the check buys is a clear refusal before the freeze
in the common case.

Cinder's ``limits`` call is one of its dearest (it totals the project's usage
of every resource); under load it costs more Cinder CPU than a snapshot
create.  So a long-lived process (a service, a fleet run) reuses one answer
for up to ``[snapshot] quota_cache_seconds`` and adds what it has claimed
since.  Two rules keep that safe:

* a cached answer may only *accept*: a set that does not fit the cached view
  is checked again against a fresh answer, so every refusal is based on what
  Cinder says now;
* a fresh answer replaces the view and its claims.

A CLI run takes one set per process, so it always asks Cinder.
"""

import threading
import time
import weakref

from cgsnap import exception

_lock = threading.Lock()
_views = weakref.WeakKeyDictionary()  # volume backend -> _View


class _View:
    def __init__(self, limits, fetched):
        self.limits = limits
        self.fetched = fetched
        self.claimed = {"snapshots": 0, "gigabytes": 0}

    def shortfall(self, need):
        """The first (kind, need, left, cap) that does not fit, or None."""
        for kind in ("snapshots", "gigabytes"):
            cap = self.limits[f"{kind}_max"]
            if cap is None or cap < 0:
                continue
            left = cap - self.limits[f"{kind}_used"] - self.claimed[kind]
            if need[kind] > left:
                return kind, need[kind], max(left, 0), cap
        return None

    def claim(self, need):
        for kind, n in need.items():
            self.claimed[kind] += n


def check(backend, snapshots, gigabytes, cache_seconds):
    """Raise :class:`~cgsnap.exception.Refused` unless ``snapshots`` more
    snapshots of ``gigabytes`` GB in all fit the quota.  Returns ``"cached"``
    or ``"fresh"``: which answer accepted the set."""
    need = {"snapshots": snapshots, "gigabytes": gigabytes}
    with _lock:
        view = _cached(backend)
        if (view is not None and time.monotonic() - view.fetched < cache_seconds
                and view.shortfall(need) is None):
            view.claim(need)
            return "cached"
    asked = time.monotonic()
    view = _View(backend.get_limits(), asked)
    with _lock:
        short = view.shortfall(need)
        if short is None:
            view.claim(need)
        _store(backend, view)
    if short is not None:
        kind, wanted, left, cap = short
        raise exception.Refused(f"Cinder {kind} quota too low: this set needs {wanted}, "
                                f"{left} of {cap} left")
    return "fresh"


def forget(backend=None):
    """Drop the cached answer for ``backend`` (all backends if None)."""
    with _lock:
        if backend is None:
            _views.clear()
        else:
            _views.pop(backend, None)


def _cached(backend):
    try:
        return _views.get(backend)
    except TypeError:  # not weak-referenceable: never cached
        return None


def _store(backend, view):
    try:
        _views[backend] = view
    except TypeError:
        pass
