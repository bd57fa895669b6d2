"""The thaw guard: a dead man's switch that thaws (or resumes) a guest even if
cgsnap is SIGKILLed, hangs, or its whole service is stopped.

Before freezing (or pausing, for ``--memory``) cgsnap starts a small guard
*process* that holds its own libvirt connection.  The guard runs with
``python -I`` from ``/`` (no code or config from the caller's directory),
in its own session, and leaves the caller's cgroup: where systemd is PID 1
it is started in a transient scope (``systemd-run --scope``); elsewhere it
moves itself into a cgroup of its own through cgroupfs (every mounted v1
hierarchy and the v2 one), which it removes when it exits.  So neither a
signal to cgsnap's process group nor ``systemctl stop`` of cgsnap's unit
(SIGTERM, then SIGKILL to every process of the unit's cgroup) reaches it.

The protocol is line-based on the guard's stdin/stdout:

    guard  -> "ready"                 connected to libvirt
    cgsnap -> "arm <seconds> <mode>"  right before the freeze (mode "thaw") or
                                      the pause (mode "resume"); guard -> "armed"
    cgsnap -> "disarm"                after cgsnap's own thaw/resume.  The guard
                                      asks the hypervisor itself (qemu-ga's
                                      guest-fsfreeze-status, or the domain state)
                                      and answers:
                                        "disarmed"            confirmed, not fired
                                        "fired <iso> <mono>"  it had already
                                                              thawed, confirmed
                                        "armed <why>"         not confirmed: it
                                                              thaws now and keeps
                                                              at it
An unanswered "disarm" counts as "armed" (fail closed): the caller must not
report the guard disarmed and must leave the guard running.

While armed the guard fires when the deadline passes, at once if its stdin
reaches EOF (cgsnap died: nobody else will thaw), or on SIGTERM.  Firing
means: thaw (or resume), then ask the hypervisor; repeat with backoff, over
reconnects to libvirtd, until the agent reports ``thawed`` (the domain is not
paused) or the domain is gone.  It never gives up.  Every attempt is logged to
a JSON record file, which ``cgsnap recover`` and the tests read.  After
firing the guard exits once it is confirmed and its owner is gone.

Records are kept bounded: each start removes records older than
:data:`RECORD_MAX_AGE_S` and all but the newest :data:`RECORD_KEEP`.

libvirt's test driver keeps its guests inside one process, so for ``test://``
URIs the same state machine runs as a thread instead.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time

from cgsnap import exception, manifest, wait

READY_TIMEOUT = 15.0
BACKOFF_INITIAL = 0.2
# A frozen guest is urgent, and what most often stops a thaw (libvirtd
# restarting, the agent channel held while it reconnects) lasts seconds: for
# the first FAST_RETRY_FOR seconds after firing, retries are at most FAST_RETRY
# apart, so the guest thaws within FAST_RETRY of libvirtd answering again
# (tests/unit/test_guard.py; the chaos soak's rg_libvirtd_restart cases).
# After that the backoff grows to BACKOFF_MAX.
FAST_RETRY = 0.5
FAST_RETRY_FOR = 60.0
BACKOFF_MAX = 5.0
ATTEMPTS_KEPT = 50          # attempts kept in a record (the count covers all of them)
RECORD_KEEP = 200           # records kept in <state_dir>/guards
RECORD_MAX_AGE_S = 7 * 86400
CGROUP_PREFIX = "cgsnap-guard-"
MODE_THAW, MODE_RESUME = "thaw", "resume"

# answers to "disarm"
DISARMED, FIRED, ARMED = "disarmed", "fired", "armed"


class Actions:
    """What the guard does to the guest, through the libvirt driver (which
    reconnects to libvirtd when the connection was lost), and through qemu-ga's
    own channel (:mod:`cgsnap.drivers.agent_channel`, its path read while
    libvirtd is still up) when libvirtd does not hold it.

    The channel is used only after libvirt failed: trying it first while
    libvirtd reconnects left libvirt's own agent connection in error ("QEMU
    guest agent is not available due to an error"; the e2e libvirtd-restart
    test)."""

    CHANNEL_TIMEOUT = 1.0

    def __init__(self, uri, instance_id, agent_timeout=10):
        from cgsnap.drivers import agent_channel, libvirt_driver
        self._drv = libvirt_driver
        self._channel_mod = agent_channel
        self.hyp = libvirt_driver.LibvirtHypervisor(uri, agent_timeout)
        self.instance_id = instance_id
        self.channel = self.qemu_pid = None
        try:
            self.channel = self.hyp.agent_channel(instance_id)
            if self.channel:
                self.qemu_pid = agent_channel.qemu_pid(instance_id)
        except Exception:  # noqa: BLE001 - the fallback is optional; libvirt stays first
            pass

    def _on_channel(self, command, libvirt_error):
        """``command`` on the agent channel, after libvirt failed with ``libvirt_error``."""
        if not self.channel:
            raise libvirt_error
        try:
            return self._channel_mod.call(self.channel, command, self.CHANNEL_TIMEOUT,
                                          pid=self.qemu_pid)
        except self._channel_mod.ChannelError as e:
            raise exception.AgentUnreachable(f"{libvirt_error}; and directly: {e}") from None

    def act(self, mode):
        """One thaw or resume; returns the driver's answer."""
        try:
            if mode == MODE_RESUME:
                return self.hyp.resume(self.instance_id)
            return self.hyp.thaw(self.instance_id)
        except exception.InstanceNotFound:
            raise
        except Exception as e:  # noqa: BLE001
            self._drv.reset_connection(self.hyp.uri)
            if mode == MODE_RESUME:
                raise
            return self._on_channel("guest-fsfreeze-thaw", e)

    def confirmed(self, mode):
        """(True, what) when the guest is confirmed thawed/running or gone."""
        try:
            if mode == MODE_RESUME:
                paused = self.hyp.is_paused(self.instance_id)
                return (not paused, "paused" if paused else "running")
            status = self.hyp.freeze_status(self.instance_id)
            return (status != "frozen", status)
        except exception.InstanceNotFound:
            return (True, "gone")
        except Exception as e:  # noqa: BLE001
            self._drv.reset_connection(self.hyp.uri)
            if mode == MODE_RESUME:
                raise
            status = self._on_channel("guest-fsfreeze-status", e)
            return (status == "thawed", f"{status} (agent channel)")


class _Record:
    """The guard's JSON record: what it did, every attempt."""

    def __init__(self, path):
        self.path = path
        self.data = None

    def start(self, reason, mode):
        self.data = {"fired_at": manifest.isotime(), "fired_mono": time.monotonic(),
                     "reason": reason, "mode": mode, "thawed": None, "error": None,
                     "attempts": 0, "attempt_log": [], "confirmed": False,
                     "confirmed_at": None, "pid": os.getpid()}
        self.write()

    def attempt(self, result=None, error=None, status=None):
        d = self.data
        d["attempts"] += 1
        if d["thawed"] is None and error is None and result is not None:
            d["thawed"] = int(result) if not isinstance(result, bool) else result
        d["error"] = error
        d["attempt_log"].append({"at": manifest.isotime(), "error": error, "status": status})
        del d["attempt_log"][:-ATTEMPTS_KEPT]
        self.write()

    def confirm(self, status):
        self.data.update(confirmed=True, confirmed_at=manifest.isotime(), status=status)
        self.write()

    def write(self):
        try:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # the record is a report; never let it stop the guard


class _Machine:
    """The guard's state machine, shared by the process and the thread."""

    def __init__(self, actions, record_path):
        self.actions = actions
        self.record = _Record(record_path)
        self.mode = MODE_THAW
        self.deadline = None      # armed, not fired
        self.firing = False       # fired, not confirmed yet
        self.fired = False        # fired at some point since arming
        self.next_try = None
        self.backoff = BACKOFF_INITIAL

    @property
    def armed(self):
        return self.deadline is not None or self.firing

    def fire(self, reason):
        if self.firing:
            return
        self.deadline = None
        self.firing = self.fired = True
        self.backoff = BACKOFF_INITIAL
        self.record.start(reason, self.mode)
        self.try_once()

    def try_once(self):
        """One attempt: act, then ask.  Schedules the next one if unconfirmed."""
        result = error = status = None
        try:
            result = self.actions.act(self.mode)
        except Exception as e:  # noqa: BLE001 - the guard must never die before thawing
            error = str(e)
        ok = False
        try:
            ok, status = self.actions.confirmed(self.mode)
        except Exception as e:  # noqa: BLE001
            error = error or f"status: {e}"
        self.record.attempt(result, error, status)
        if ok:
            self.record.confirm(status)
            self.firing = False
            self.next_try = None
        else:
            now = time.monotonic()
            fast = now - self.record.data["fired_mono"] < FAST_RETRY_FOR
            self.next_try = now + (min(self.backoff, FAST_RETRY) if fast else self.backoff)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def check_confirmed(self):
        try:
            return self.actions.confirmed(self.mode)
        except Exception as e:  # noqa: BLE001 - unanswered counts as not confirmed
            return False, f"status: {e}"

    def timeout(self):
        """Seconds until something is due, or None."""
        due = [t for t in (self.deadline, self.next_try) if t is not None]
        return max(min(due) - time.monotonic(), 0) if due else None

    def tick(self):
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            self.fire("deadline")
        elif self.firing and self.next_try is not None and now >= self.next_try:
            self.try_once()

    def command(self, line, write):
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "arm":
            seconds, _, mode = arg.partition(" ")
            self.mode = mode or MODE_THAW
            self.deadline = time.monotonic() + float(seconds)
            self.firing = self.fired = False
            write("armed")
        elif cmd == "disarm":
            if self.firing:
                write(f"{ARMED} still {self.record.data.get('status') or 'unconfirmed'}; "
                      f"{self.record.data['attempts']} attempts")
                return
            if self.fired:  # fired and confirmed
                self.deadline = None
                write(f"{FIRED} {self.record.data['fired_at']} {self.record.data['fired_mono']}")
                self.fired = False
                return
            ok, status = self.check_confirmed()
            if ok:
                self.deadline = None
                write(DISARMED)
            else:  # cgsnap's thaw did not take: thaw now, and keep at it
                self.fire("disarm-unconfirmed")
                write(f"{ARMED} {status}")


def _serve(lines_in, write, actions, record_path):
    """Run the guard until its owner is gone and nothing is left to do.

    ``lines_in(timeout)`` returns a line, ``TimeoutError``, ``None`` (EOF) or
    ``_TERM`` (SIGTERM); after EOF it keeps waiting out ``timeout`` (the next
    retry), so the backoff needs no sleep of its own."""
    m = _Machine(actions, record_path)
    write("ready")
    owner_gone = terminating = False
    while True:
        if (owner_gone or terminating) and not m.armed:
            return m
        line = lines_in(m.timeout())
        if line is TimeoutError:
            m.tick()
        elif line is None or line is _TERM:
            owner_gone = owner_gone or line is None
            terminating = terminating or line is _TERM
            if m.deadline is not None:
                m.fire("owner-gone" if line is None else "sigterm")
        else:
            m.command(line, write)


_TERM = object()


# -- the guard process ---------------------------------------------------------

def _cgroup_mounts():
    """[(mount point, 'v1'|'v2')] of the cgroup hierarchies mounted here."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fstype = post.split()[0] if post else ""
                if fstype in ("cgroup", "cgroup2"):
                    out.append((pre.split()[4], "v2" if fstype == "cgroup2" else "v1"))
    except OSError:
        pass
    return out


def leave_caller_cgroup(pid=None):
    """Move this process into a cgroup of its own in every writable hierarchy;
    return the directories made (to be removed at exit)."""
    pid = pid or os.getpid()
    made = []
    for mount, _kind in _cgroup_mounts():
        path = os.path.join(mount, f"{CGROUP_PREFIX}{pid}")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        try:
            for knob in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset needs them set first
                own, parent = os.path.join(path, knob), os.path.join(mount, knob)
                if os.path.exists(own) and os.path.exists(parent):
                    with open(parent) as src, open(own, "w") as dst:
                        dst.write(src.read())
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            made.append(path)
        except OSError:
            try:
                os.rmdir(path)
            except OSError:
                pass
    return made


def remove_own_cgroups(made):
    """Move back to each hierarchy's root and remove the directories made."""
    for path in made:
        try:
            with open(os.path.join(os.path.dirname(path), "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            os.rmdir(path)
        except OSError:
            pass


def _prune_stale_cgroups():
    """Remove empty cgroups of guards that were killed (SIGKILL skips cleanup)."""
    for mount, _kind in _cgroup_mounts():
        try:
            names = os.listdir(mount)
        except OSError:
            continue
        for name in names:
            if name.startswith(CGROUP_PREFIX):
                try:
                    os.rmdir(os.path.join(mount, name))  # fails while it has processes
                except OSError:
                    pass


def main(argv=None):  # python -I -m cgsnap.guard URI INSTANCE RECORD [AGENT_TIMEOUT]
    args = (argv or sys.argv[1:])
    uri, instance_id, record_path = args[:3]
    agent_timeout = int(args[3]) if len(args) > 3 else 10
    made = [] if os.environ.get("CGSNAP_GUARD_SCOPE") else leave_caller_cgroup()
    _prune_stale_cgroups()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    term = {"flag": False}

    def _on_term(_sig, _frame):
        term["flag"] = True
        try:
            os.write(wake_w, b"t")
        except OSError:
            pass

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        actions = Actions(uri, instance_id, agent_timeout)
        actions.hyp.conn  # connect now: "ready" means connected  # noqa: B018
        fd = sys.stdin.fileno()
        buf = b""
        eof = False

        def lines_in(timeout):
            nonlocal buf, eof
            while b"\n" not in buf:
                if term["flag"]:
                    term["flag"] = False
                    return _TERM
                ready, _, _ = select.select([wake_r] if eof else [fd, wake_r], [], [], timeout)
                if not ready:
                    return TimeoutError
                if wake_r in ready:
                    os.read(wake_r, 64)
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    eof = True
                    return None
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            return line.decode()

        def write(msg):
            try:
                sys.stdout.write(msg + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass  # the owner is gone; the record says what happened

        _serve(lines_in, write, actions, record_path)
    finally:
        remove_own_cgroups(made)


def err_path(record):
    """Where the guard process of ``record`` writes its stderr."""
    return record[:-len(".json")] + ".err" if record.endswith(".json") else record + ".err"


def _prune_records(directory):
    """Keep the newest RECORD_KEEP records (and their .err files), none older
    than RECORD_MAX_AGE_S."""
    try:
        names = os.listdir(directory)
        entries = [os.path.join(directory, n) for n in names if n.endswith(".json")]
        entries.sort(key=os.path.getmtime, reverse=True)
    except OSError:
        return
    now = time.time()
    kept = set()
    for i, path in enumerate(entries):
        try:
            if i >= RECORD_KEEP or now - os.path.getmtime(path) > RECORD_MAX_AGE_S:
                os.remove(path)
            else:
                kept.add(err_path(path))
        except OSError:
            pass
    for name in names:  # an .err whose record is gone; one of a guard just starting is young
        path = os.path.join(directory, name)
        try:
            if name.endswith(".err") and path not in kept and \
                    now - os.path.getmtime(path) > 3600:
                os.remove(path)
        except OSError:
            pass


def _systemd_is_init():
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd" and shutil.which("systemd-run") is not None
    except OSError:
        return False


class Guard:
    """cgsnap's handle on a running guard (process or thread)."""

    def __init__(self, uri, instance_id, record_path, agent_timeout=10, process=None):
        self.record_path = record_path
        self.state = "idle"  # idle | armed | disarmed
        os.makedirs(os.path.dirname(record_path), exist_ok=True)
        _prune_records(os.path.dirname(record_path))
        if process is None:
            process = not uri.startswith("test:")
        if not process:
            self._start_thread(uri, instance_id, agent_timeout)
        elif _systemd_is_init():
            try:  # a transient scope of its own; if systemd will not, move by cgroupfs
                self._start_process(uri, instance_id, agent_timeout, scope=True)
                self._expect("ready", READY_TIMEOUT)
                return
            except exception.QuiesceFailed:
                self._start_process(uri, instance_id, agent_timeout)
        else:
            self._start_process(uri, instance_id, agent_timeout)
        self._expect("ready", READY_TIMEOUT)

    # -- transports -----------------------------------------------------------
    def _start_process(self, uri, instance_id, agent_timeout, scope=False):
        argv = [sys.executable, "-I", "-m", "cgsnap.guard", uri, instance_id,
                self.record_path, str(agent_timeout)]
        env = dict(os.environ)
        if scope:
            argv = ["systemd-run", "--scope", "--quiet", "--collect",
                    f"--unit=cgsnap-guard-{os.getpid()}-{int(time.time() * 1000)}", *argv]
            env["CGSNAP_GUARD_SCOPE"] = "1"
        # The guard may outlive cgsnap (thawing after a kill, retrying while
        # libvirtd restarts): it must not hold cgsnap's stderr, or whoever reads
        # cgsnap's output to its end (cron, a pipe) waits for the guard.  What it
        # might print (a crash) goes to a file beside its record.
        err = os.open(err_path(self.record_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o600)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                bufsize=1, start_new_session=True, cwd="/", env=env)
        finally:
            os.close(err)
        self.pid = self.proc.pid
        self._send = lambda line: (self.proc.stdin.write(line + "\n"), self.proc.stdin.flush())
        self._readline = self._proc_readline

    def _proc_readline(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def _start_thread(self, uri, instance_id, agent_timeout):
        import queue
        to_guard, from_guard = queue.Queue(), queue.Queue()

        def lines_in(timeout):
            try:
                return to_guard.get(timeout=timeout)
            except queue.Empty:
                return TimeoutError

        actions = Actions(uri, instance_id, agent_timeout)
        self.thread = threading.Thread(
            target=_serve, args=(lines_in, from_guard.put, actions, self.record_path),
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

    def arm(self, seconds, mode=MODE_THAW):
        self._send(f"arm {seconds} {mode}")
        self.state = "armed"
        self._expect("armed", READY_TIMEOUT)

    def disarm(self):
        """Return ``(outcome, fired_mono)``: outcome ``"disarmed"``, ``"fired"``
        (the guard thawed the guest, confirmed) or ``"armed"`` (not confirmed,
        or no answer: the guard keeps thawing; fail closed)."""
        try:
            self._send("disarm")
            line = self._readline(READY_TIMEOUT) or ""
        except (OSError, ValueError):
            line = ""
        word, _, rest = line.partition(" ")
        if word == DISARMED:
            self.state = "disarmed"
            return DISARMED, None
        if word == FIRED:
            self.state = "disarmed"
            parts = rest.split()
            return FIRED, float(parts[1]) if len(parts) > 1 else None
        return ARMED, None

    def close(self):
        """Stop the guard.  An armed guard (not confirmed disarmed) is left
        running: closing its stdin makes it thaw and exit once confirmed."""
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            if self.state == "armed":
                return
            try:
                wait.poll(lambda: self.proc.poll(), lambda rc: rc is not None, 5.0,
                          what="thaw guard exit")
            except exception.WaitTimeout:
                self.proc.kill()
        else:
            self._close_thread()
            if self.state != "armed":
                self.thread.join(5)


def _queue_get(q, timeout):
    import queue
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


_registry = {}
_registry_lock = threading.Lock()


def start(set_id, uri, instance_id, record_path, agent_timeout=10):
    guard = Guard(uri, instance_id, record_path, agent_timeout)
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


def record_path(state_dir, set_id):
    return os.path.join(state_dir, "guards", f"{set_id}.json")


if __name__ == "__main__":
    main()
