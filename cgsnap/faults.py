"""Named fault-injection points, for the failure tests and the fault matrix.

Production code calls :func:`point` at the boundaries worth breaking (before
and after every external call, at the start of every task).  Nothing happens
unless a fault is armed, in-process, by test machinery: :func:`arm` or
:func:`arm_spec`.  cgsnap itself never arms a fault, and reads no environment
variable for it: subprocess tests start the CLI through ``tests/faultcli.py``
(not part of the installed package), which passes ``CGSNAP_FAULT`` to
:func:`arm_spec`.  Spec syntax, e.g.::

    hypervisor.freeze:raise
    volume.create_snapshot.after:raise@3,task.ThawGuest:hang=30

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
_unreachable_hooks = []  # storage drivers register how to break their endpoint
_VERBS = ("raise", "hang", "kill", "unreachable")


def arm(name, action="raise"):
    """Arm ``name`` with an action string or a callable ``f(name)``."""
    with _lock:
        _armed[name] = action
        _hits[name] = 0


def arm_spec(spec):
    """Arm every ``point[:action]`` of a comma-separated spec (see the module
    docstring); a point without an action raises.  Raises ValueError, arming
    nothing, if an action is not one of the known ones."""
    items = []
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        name, _, action = item.partition(":")
        action = action.strip() or "raise"
        verb = action.partition("@")[0].partition("=")[0]
        if not name.strip() or verb not in _VERBS:
            raise ValueError(f"bad fault spec item {item!r}: want point[:action], "
                             f"action one of {', '.join(_VERBS)}")
        items.append((name.strip(), action))
    for name, action in items:
        arm(name, action)


def on_unreachable(bound_method):
    """Register a driver's method, called when an ``unreachable`` fault fires.
    Held weakly: registering must not keep old clients (and their kept-alive
    connections) alive."""
    _unreachable_hooks.append(weakref.WeakMethod(bound_method))


def reset():
    """Disarm everything."""
    with _lock:
        _armed.clear()
        _hits.clear()


def point(name):
    """Fire the fault armed at ``name``, if any."""
    with _lock:
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
