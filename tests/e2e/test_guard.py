"""The thaw guard on the real guest: cgsnap SIGKILLed or hung inside the
freeze window, its whole cgroup stopped, libvirtd restarted, the guest agent
stalled, and ``--memory``'s pause; always measured from outside with qemu-ga's
guest-fsfreeze-status (or the domain state)."""

import glob
import json
import os
import signal
import subprocess
import time

import libvirt
import pytest

from tests import faultcli

from .conftest import Sampler, run_testguest

MARGIN = 1.0


def _start(guest, fault, freeze_timeout, args=(), extra="", cgroup=None):
    text = guest.conf.read_text()
    text = text.replace("freeze_timeout = 30", f"freeze_timeout = {freeze_timeout}\n"
                        f"thaw_guard_margin = {MARGIN}\n{extra}")
    guest.conf.write_text(text)
    env = dict(os.environ, CGSNAP_FAULT=fault)

    def _join_cgroup():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(faultcli.COMMAND + ["--config-file", str(guest.conf), "create",
                                                *args, "--all-volumes", guest.name],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_join_cgroup if cgroup else None)


def _cgsnap(guest, *argv):
    return subprocess.run(faultcli.COMMAND + ["--config-file", str(guest.conf), *argv],
                          capture_output=True, text=True)


def _wait_for(what, fn, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} not seen within {timeout}s", pytrace=False)


def _seen(sampler, value, after=0.0):
    return lambda: [t for t, v in list(sampler.samples) if v == value and t > after]


def _thawed_again(sampler):
    """Times the guest was seen thawed after it was first seen frozen."""
    def fn():
        frozen = _seen(sampler, "frozen")()
        return frozen and _seen(sampler, "thawed", frozen[0])()
    return fn


def _guard_records(guest):
    out = []
    for path in glob.glob(str(guest.tmp / "state" / "guards" / "*.json")):
        with open(path) as f:
            out.append(json.load(f))
    return out


def _guard_pids(guest):
    pids = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            argv = open(cmdline, "rb").read().split(b"\0")
        except OSError:
            continue
        if b"cgsnap.guard" in argv and guest.id.encode() in argv:
            pids.append(int(cmdline.split("/")[2]))
    return pids


def _frozen_span(samples):
    frozen = [t for t, v in samples if v == "frozen"]
    thawed_after = [t for t, v in samples if v == "thawed" and frozen and t > frozen[0]]
    assert frozen and thawed_after, "the guest was never seen frozen, then thawed"
    return frozen[0], thawed_after[0]


def _recover(guest):
    out = _cgsnap(guest, "recover", "-f", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sigkill_inside_the_window_is_thawed_by_the_guard(real_guest):
    sampler = Sampler(real_guest.freeze_status, interval=0.02)
    sampler.start()
    proc = _start(real_guest, "hypervisor.snapshot_disks.after:kill", freeze_timeout=10)
    proc.wait(60)
    died = time.time()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1.0)
    first_frozen, thawed = _frozen_span(sampler.stop())
    print(f"\nSIGKILL: frozen {thawed - first_frozen:.2f}s in all, thawed "
          f"{max(thawed - died, 0):.2f}s after the kill (freeze_timeout 10s)")
    assert thawed - first_frozen < 10 + 1.0
    # The overlays the dead process made are still active: recover puts the
    # disks back and marks the set failed.
    assert real_guest.disk_sources() != real_guest.original
    rows = _recover(real_guest)
    assert [r["action"] for r in rows] == ["reverted"] and rows[0]["result"] == "ok"
    assert real_guest.disk_sources() == real_guest.original


def test_hang_inside_the_window_is_thawed_at_the_deadline(real_guest):
    sampler = Sampler(real_guest.freeze_status, interval=0.02)
    sampler.start()
    proc = _start(real_guest, "task.SnapshotLocalDisks:hang=30", freeze_timeout=2)
    deadline = time.time() + 20
    while time.time() < deadline and not any(v == "frozen" for _, v in sampler.samples):
        time.sleep(0.05)
    time.sleep(4.0)
    first_frozen, thawed = _frozen_span(sampler.stop())
    frozen_for = thawed - first_frozen
    print(f"\nhang: guard thawed after {frozen_for:.2f}s (freeze_timeout 2s + margin 1s)")
    assert 2.0 <= frozen_for <= 2 + 1.0 + 1.0
    proc.kill()
    proc.wait(10)
    rows = _recover(real_guest)
    assert rows and rows[0]["action"] == "reverted"
    guard_note = json.loads(_cgsnap(real_guest, "show", rows[0]["id"], "-f", "json").stdout
                            )["status_reason"]
    assert "thaw guard" in guard_note


def _hang_frozen(guest, freeze_timeout, extra="", cgroup=None):
    """cgsnap hung inside the window (before its local snapshot call)."""
    sampler = Sampler(guest.freeze_status, interval=0.05)
    sampler.start()
    proc = _start(guest, "task.SnapshotLocalDisks:hang=60", freeze_timeout, extra=extra,
                  cgroup=cgroup)
    _wait_for("the guest frozen", _seen(sampler, "frozen"), 60)
    return sampler, proc


def _end(guest, proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    rows = _recover(guest)
    assert all(r["result"] == "ok" for r in rows), rows


def test_libvirtd_restart_inside_the_window_guard_reconnects_and_thaws(real_guest):
    sampler, proc = _hang_frozen(real_guest, freeze_timeout=8)
    t0 = time.time()
    run_testguest("libvirtd-stop")
    run_testguest("libvirtd-start")
    print(f"\nlibvirtd restarted in {time.time() - t0:.2f}s")
    _wait_for("the guest thawed", _seen(sampler, "thawed", t0), 30)
    first_frozen, thawed = _frozen_span(sampler.stop())
    print(f"frozen {thawed - first_frozen:.2f}s (freeze_timeout 8s + margin {MARGIN}s)")
    assert thawed - first_frozen <= 8 + MARGIN + 2.0
    (rec,) = _guard_records(real_guest)
    assert rec["reason"] == "deadline" and rec["confirmed"] and rec["status"] == "thawed"
    _end(real_guest, proc)


def test_libvirtd_down_past_the_deadline_guard_thaws_through_the_agent_channel(real_guest):
    """libvirtd stops inside the window and stays down past the deadline: nobody
    can thaw through libvirt, so the guard speaks to qemu-ga on the domain's
    agent channel itself (cgsnap/drivers/agent_channel.py).  Before that, the
    guest stayed frozen until libvirtd was back."""
    from datetime import datetime
    freeze_timeout = 3
    sampler, proc = _hang_frozen(real_guest, freeze_timeout=freeze_timeout)
    first_frozen = _seen(sampler, "frozen")()[0]
    try:
        run_testguest("libvirtd-stop")
        down_at = time.time()
        due = first_frozen + freeze_timeout + MARGIN
        # libvirtd stays down until well after the guard was due
        _wait_for("a confirmed guard record", lambda: [
            r for r in _guard_records(real_guest) if r.get("confirmed")],
            due + 4.0 - time.time())
        confirmed_while_down = time.time()
    finally:
        run_testguest("libvirtd-start")
    (rec,) = _guard_records(real_guest)
    confirmed_at = datetime.fromisoformat(rec["confirmed_at"].replace("Z", "+00:00")).timestamp()
    print(f"\nlibvirtd down from +{down_at - first_frozen:.2f}s; guard due at "
          f"+{due - first_frozen:.2f}s, confirmed thawed at +{confirmed_at - first_frozen:.2f}s "
          f"({rec['status']}, {rec['attempts']} attempts)")
    assert rec["reason"] == "deadline" and "agent channel" in rec["status"]
    assert confirmed_at <= due + 1.5 and confirmed_at < confirmed_while_down
    _wait_for("libvirt answering", lambda: _libvirt_status(real_guest), 30, 0.2)
    assert real_guest.freeze_status() == "thawed"
    sampler.stop()
    _end(real_guest, proc)


def _libvirt_status(guest):
    try:
        return guest.freeze_status()
    except Exception:  # noqa: BLE001 - libvirtd still coming back
        return None


@pytest.mark.parametrize("grace", [2.0, None], ids=["term-then-kill", "kill-only"])
def test_stopping_cgsnaps_whole_cgroup_does_not_stop_the_guard(real_guest, grace):
    cg = f"/sys/fs/cgroup/unified/guard-e2e-{os.getpid()}-{int(time.time() * 1000)}"
    os.mkdir(cg)
    try:
        sampler, proc = _hang_frozen(real_guest, freeze_timeout=10, cgroup=cg)
        members = lambda: [int(p) for p in open(f"{cg}/cgroup.procs").read().split()]  # noqa
        guards = _wait_for("the guard process", lambda: _guard_pids(real_guest), 10)
        assert proc.pid in members() and not set(guards) & set(members())
        if grace:  # systemctl stop: SIGTERM to every process, SIGKILL after the grace
            for pid in members():
                os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        killed = time.time()
        with open(f"{cg}/cgroup.kill", "w") as f:
            f.write("1")
        proc.wait(10)
        _wait_for("the cgroup empty", lambda: not members(), 10)
        _wait_for("the guest thawed", _thawed_again(sampler), 20)
        first_frozen, thawed = _frozen_span(sampler.stop())
        print(f"\n{'SIGTERM+' if grace else ''}SIGKILL of the cgroup: frozen "
              f"{thawed - first_frozen:.2f}s in all (freeze_timeout 10s)")
        assert thawed - first_frozen <= 10 + MARGIN
        if not grace:
            assert thawed - killed < 3.0, "the guard should thaw at once when its owner dies"
            (rec,) = _guard_records(real_guest)
            assert rec["reason"] == "owner-gone" and rec["confirmed"]
        _wait_for("the guard exited", lambda: not _guard_pids(real_guest), 15)
    finally:
        os.rmdir(cg)
    _end(real_guest, proc)


def _qemu_pid(name):
    with open(f"/run/libvirt/qemu/{name}.pid") as f:
        return int(f.read().strip())


def test_guard_keeps_thawing_through_a_stalled_agent(real_guest):
    sampler, proc = _hang_frozen(real_guest, freeze_timeout=3,
                                 extra="agent_timeout = 2\n")
    qemu = _qemu_pid(real_guest.name)
    os.kill(qemu, signal.SIGSTOP)  # the agent (and the whole guest) stops answering
    try:
        _wait_for("3 failed guard attempts", lambda: [
            r for r in _guard_records(real_guest) if r["attempts"] >= 3], 60, 0.2)
    finally:
        os.kill(qemu, signal.SIGCONT)
    resumed = time.time()
    _wait_for("the guest thawed", _seen(sampler, "thawed", resumed), 60)
    sampler.stop()
    (rec,) = _guard_records(real_guest)
    print(f"\nstalled agent: {rec['attempts']} guard attempts, confirmed {rec['confirmed']}")
    assert rec["confirmed"] and rec["attempts"] >= 4
    assert any(a["error"] for a in rec["attempt_log"])
    _end(real_guest, proc)


def test_memory_sigkill_inside_the_pause_is_resumed_by_the_guard(real_guest):
    text = real_guest.conf.read_text()
    proc = _start(real_guest, "hypervisor.snapshot_disks:kill", freeze_timeout=20,
                  args=("--memory",))
    proc.wait(120)
    killed = time.time()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    dom = libvirt.open("qemu:///system").lookupByName(real_guest.name)
    _wait_for("the guest running", lambda: dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, 10)
    print(f"\n--memory SIGKILL: running again {time.time() - killed:.2f}s after the kill")
    assert time.time() - killed < 5
    (rec,) = _guard_records(real_guest)
    assert rec["mode"] == "resume" and rec["reason"] == "owner-gone" and rec["confirmed"]
    real_guest.conf.write_text(text)
    _end(real_guest, proc)
