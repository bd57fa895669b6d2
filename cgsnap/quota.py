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

Per volume type: where the backend's answer has per-type limits
(``types``: Cinder's ``snapshots_<type>`` and ``gigabytes_<type>``, from the
quota-set detail), the set's need per type is counted too (asked of the
caller only when some per-type limit is finite), and a refusal names the type.
"""

import threading
import time
import weakref

from cgsnap import exception

_lock = threading.Lock()
_views = weakref.WeakKeyDictionary()  # volume backend -> _View
KINDS = ("snapshots", "gigabytes")


class _TypeNeed:
    """The set's need per volume type, ``{type: {kind: n}}``, computed once and
    only if asked (it may cost the caller a Cinder call)."""

    def __init__(self, fn):
        self.fn, self.value = fn, None

    def __call__(self):
        if self.value is None:
            self.value = (self.fn() if self.fn else None) or {}
        return self.value


class _View:
    def __init__(self, limits, fetched):
        self.limits = limits
        self.fetched = fetched
        self.claimed = {"snapshots": 0, "gigabytes": 0}
        self.type_claimed = {}  # (volume type, kind) -> claimed

    def shortfall(self, need, type_need):
        """The first (kind, need, left, cap, volume type or None) that does
        not fit, or None."""
        for kind in KINDS:
            cap = self.limits[f"{kind}_max"]
            if cap is None or cap < 0:
                continue
            left = cap - self.limits[f"{kind}_used"] - self.claimed[kind]
            if need[kind] > left:
                return kind, need[kind], max(left, 0), cap, None
        for vtype, lim in sorted((self.limits.get("types") or {}).items()):
            for kind in KINDS:
                cap = lim.get(f"{kind}_max")
                if cap is None or cap < 0:
                    continue
                wanted = type_need().get(vtype, {}).get(kind, 0)
                left = (cap - lim.get(f"{kind}_used", 0)
                        - self.type_claimed.get((vtype, kind), 0))
                if wanted > left:
                    return kind, wanted, max(left, 0), cap, vtype
        return None

    def claim(self, need, type_need):
        for kind, n in need.items():
            self.claimed[kind] += n
        # counted only where a per-type limit made shortfall() ask for it
        for vtype, kinds in (type_need.value or {}).items():
            for kind, n in kinds.items():
                key = (vtype, kind)
                self.type_claimed[key] = self.type_claimed.get(key, 0) + n


def check(backend, snapshots, gigabytes, cache_seconds, by_type=None):
    """Raise :class:`~cgsnap.exception.Refused` unless ``snapshots`` more
    snapshots of ``gigabytes`` GB in all fit the quota, project-wide and per
    volume type.  ``by_type`` returns the set's need per volume type,
    ``{type: {"snapshots": n, "gigabytes": g}}``; it is called (once) only
    when the answer has a finite per-type limit.  Returns ``"cached"`` or
    ``"fresh"``: which answer accepted the set."""
    need = {"snapshots": snapshots, "gigabytes": gigabytes}
    type_need = _TypeNeed(by_type)
    if by_type is not None:  # computed outside the lock: it may call Cinder
        with _lock:
            view = _cached(backend)
        if view is not None and _has_type_limits(view.limits):
            type_need()
    with _lock:
        view = _cached(backend)
        if (view is not None and time.monotonic() - view.fetched < cache_seconds
                and view.shortfall(need, type_need) is None):
            view.claim(need, type_need)
            return "cached"
    asked = time.monotonic()
    view = _View(backend.get_limits(), asked)
    if _has_type_limits(view.limits):
        type_need()
    with _lock:
        short = view.shortfall(need, type_need)
        if short is None:
            view.claim(need, type_need)
        _store(backend, view)
    if short is not None:
        kind, wanted, left, cap, vtype = short
        of = f" for volume type {vtype}" if vtype is not None else ""
        raise exception.Refused(f"Cinder {kind} quota{of} too low: this set needs {wanted}, "
                                f"{left} of {cap} left")
    return "fresh"


def _has_type_limits(limits):
    return any(cap is not None and cap >= 0
               for lim in (limits.get("types") or {}).values()
               for kind in KINDS for cap in [lim.get(f"{kind}_max")])


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
