"""The thaw guard: a dead man's switch that thaws a frozen guest even if
cgsnap is SIGKILLed or hangs.

Before freezing, cgsnap starts a small guard *process* (its own session, so a
signal to cgsnap's process group does not reach it) that holds its own
libvirt connection.  The protocol is line-based on the guard's stdin/stdout:

    guard  -> "ready"                 connected to libvirt
    cgsnap -> "arm <seconds>"         right before fsFreeze; guard -> "armed"
    cgsnap -> "disarm"                right after cgsnap's own thaw;
                                      guard -> "disarmed" or "fired <iso time>"

While armed, the guard thaws the guest when the deadline passes, or at once
if its stdin reaches EOF (cgsnap died: nobody else will thaw).  It writes
what it did to a JSON record file, which ``cgsnap recover`` and the tests
read.  libvirt's test driver keeps its guests inside one process, so for
``test://`` URIs the same guard runs as a thread instead.
"""

import json
import os
import select
import subprocess
import sys
import threading
import time

from cgsnap import exception, manifest, wait

READY_TIMEOUT = 15.0


def _thaw(dom_lookup, record_path, reason):
    """Thaw with a few retries (the agent may be busy finishing a command)."""
    result = {"fired_at": manifest.isotime(), "reason": reason, "thawed": None, "error": None}
    for _ in range(5):
        try:
            result["thawed"] = dom_lookup().fsThaw()
            result["error"] = None
            break
        except Exception as e:  # noqa: BLE001 - the guard must never die before thawing
            result["error"] = str(e)
            time.sleep(0.5)
    tmp = record_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, record_path)
    return result


def _serve(lines_in, write, dom_lookup, record_path):
    """The guard's state machine, shared by the process and the thread."""
    write("ready")
    deadline = None
    fired = None
    while True:
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
        line = lines_in(timeout)
        if line is TimeoutError:
            if deadline is not None and fired is None:
                fired = _thaw(dom_lookup, record_path, "deadline")
                deadline = None
            continue
        if line is None:  # EOF: the owner is gone
            if deadline is not None and fired is None:
                _thaw(dom_lookup, record_path, "owner-gone")
            return
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "arm":
            deadline = time.monotonic() + float(arg)
            write("armed")
        elif cmd == "disarm":
            deadline = None
            write(f"fired {fired['fired_at']}" if fired else "disarmed")
            fired = None


def main(argv=None):  # the guard process: python -m cgsnap.guard URI INSTANCE RECORD
    import libvirt
    uri, instance_id, record_path = (argv or sys.argv[1:])[:3]
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(uri)

    def lookup():
        return conn.lookupByUUIDString(instance_id)

    fd = sys.stdin.fileno()
    buf = b""

    def lines_in(timeout):
        nonlocal buf
        while b"\n" not in buf:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return TimeoutError
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        return line.decode()

    def write(msg):
        sys.stdout.write(msg + "\n")
        sys.stdout.flush()

    _serve(lines_in, write, lookup, record_path)


class Guard:
    """cgsnap's handle on a running guard (process or thread)."""

    def __init__(self, uri, instance_id, record_path):
        self.record_path = record_path
        os.makedirs(os.path.dirname(record_path), exist_ok=True)
        if uri.startswith("test:"):
            self._start_thread(uri, instance_id)
        else:
            self._start_process(uri, instance_id)
        self._expect("ready", READY_TIMEOUT)

    # -- transports -----------------------------------------------------------
    def _start_process(self, uri, instance_id):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cgsnap.guard", uri, instance_id, self.record_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            start_new_session=True)
        self.pid = self.proc.pid
        self._send = lambda line: (self.proc.stdin.write(line + "\n"), self.proc.stdin.flush())
        self._readline = self._proc_readline

    def _proc_readline(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def _start_thread(self, uri, instance_id):
        import queue

        from cgsnap.drivers import libvirt_driver
        to_guard, from_guard = queue.Queue(), queue.Queue()

        def lines_in(timeout):
            try:
                return to_guard.get(timeout=timeout)
            except queue.Empty:
                return TimeoutError

        lookup = lambda: libvirt_driver.connection(uri).lookupByUUIDString(instance_id)  # noqa
        self.thread = threading.Thread(
            target=_serve, args=(lines_in, from_guard.put, lookup, self.record_path),
            daemon=True, name="cgsnap-thaw-guard")
        self.thread.start()
        self.proc, self.pid = None, os.getpid()
        self._send = to_guard.put
        self._close_thread = lambda: to_guard.put(None)
        self._readline = lambda timeout: _queue_get(from_guard, timeout)

    # -- protocol -------------------------------------------------------------
    def _expect(self, prefix, timeout):
        line = self._readline(timeout)
        if not line or not line.startswith(prefix):
            self.close()
            raise exception.QuiesceFailed(
                f"thaw guard did not answer '{prefix}' (got {line!r}); not freezing")
        return line

    def arm(self, seconds):
        self._send(f"arm {seconds}")
        self._expect("armed", READY_TIMEOUT)

    def disarm(self):
        """Return "disarmed", or "fired" if the guard already thawed the guest."""
        self._send("disarm")
        line = self._readline(READY_TIMEOUT) or ""
        return "fired" if line.startswith("fired") else "disarmed"

    def close(self):
        """Stop the guard (disarm first: closing while armed thaws)."""
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                wait.poll(lambda: self.proc.poll(), lambda rc: rc is not None, 5.0,
                          what="thaw guard exit")
            except exception.WaitTimeout:
                self.proc.kill()
        else:
            self._close_thread()
            self.thread.join(5)


def _queue_get(q, timeout):
    import queue
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


_registry = {}
_registry_lock = threading.Lock()


def start(set_id, uri, instance_id, record_path):
    guard = Guard(uri, instance_id, record_path)
    with _registry_lock:
        old = _registry.pop(set_id, None)
        _registry[set_id] = guard
    if old:
        old.close()
    return guard


def get(set_id):
    with _registry_lock:
        return _registry.get(set_id)


def stop(set_id):
    with _registry_lock:
        guard = _registry.pop(set_id, None)
    if guard:
        guard.close()


if __name__ == "__main__":
    main()
