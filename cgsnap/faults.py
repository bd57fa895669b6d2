"""Named fault-injection points, for the failure tests and the fault matrix.

Production code calls :func:`point` at the boundaries worth breaking (before
and after every external call, at the start of every task).  Nothing happens
unless a fault is armed, either in-process with :func:`arm` (tests) or through
the ``CGSNAP_FAULT`` environment variable (subprocess tests), e.g.::

    CGSNAP_FAULT="hypervisor.freeze:raise"
    CGSNAP_FAULT="volume.create_snapshot.after:raise@3,task.ThawGuest:hang=30"

Actions: ``raise`` (an :class:`~cgsnap.exception.InjectedFault`), ``hang=S``
(sleep S seconds), ``kill`` (SIGKILL this process), ``unreachable`` (from
here on, the storage clients talk to a closed port: real connection errors
for the rest of the process).  ``@N`` fires only on the N-th hit of the
point.  In-process callers may arm any callable instead.
"""

import os
import signal
import threading
import time
import weakref

from cgsnap import exception

_lock = threading.Lock()
_armed = {}   # point name -> action (str or callable)
_hits = {}    # point name -> count
_env_loaded = None
_unreachable_hooks = []  # storage drivers register how to break their endpoint


def _load_env():
    global _env_loaded
    spec = os.environ.get("CGSNAP_FAULT", "")
    if spec == _env_loaded:
        return
    _env_loaded = spec
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition(":")
        _armed[name] = action or "raise"


def arm(name, action="raise"):
    """Arm ``name`` with an action string or a callable ``f(name)``."""
    with _lock:
        _armed[name] = action
        _hits[name] = 0


def on_unreachable(bound_method):
    """Register a driver's method, called when an ``unreachable`` fault fires.
    Held weakly: registering must not keep old clients (and their kept-alive
    connections) alive."""
    _unreachable_hooks.append(weakref.WeakMethod(bound_method))


def reset():
    """Disarm everything (including what came from the environment)."""
    global _env_loaded
    with _lock:
        _armed.clear()
        _hits.clear()
        _env_loaded = os.environ.get("CGSNAP_FAULT", "")


def point(name):
    """Fire the fault armed at ``name``, if any."""
    with _lock:
        _load_env()
        action = _armed.get(name)
        if action is None:
            return
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if callable(action):
        action(name)
        return
    action, _, nth = action.partition("@")
    if nth and int(nth) != hit:
        return
    verb, _, arg = action.partition("=")
    if verb == "raise":
        raise exception.InjectedFault(f"injected fault at {name}")
    if verb == "hang":
        time.sleep(float(arg or 3600))
    elif verb == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif verb == "unreachable":
        for ref in list(_unreachable_hooks):
            hook = ref()
            if hook is not None:
                hook()
    else:
        raise ValueError(f"unknown fault action {action!r} for {name}")
