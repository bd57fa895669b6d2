"""Progress reporting for long waits.  Silent unless a reporter is installed
(the CLI installs one that writes to stderr when stderr is a TTY)."""

import threading

_reporter = None
_lock = threading.Lock()


def set_reporter(fn):
    global _reporter
    _reporter = fn


def report(message):
    fn = _reporter
    if fn is not None:
        with _lock:
            fn(message)
