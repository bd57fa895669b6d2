"""The thaw guard on the real guest: cgsnap SIGKILLed or hung inside the
freeze window, measured from outside with qemu-ga's guest-fsfreeze-status."""

import json
import os
import signal
import subprocess
import time

from .. import faultcli
from .conftest import ROOT, Sampler

CGSNAP = os.path.join(ROOT, ".venv", "bin", "cgsnap")


def _start(guest, fault, freeze_timeout):
    guest.conf.write_text(guest.conf.read_text().replace(
        "freeze_timeout = 30", f"freeze_timeout = {freeze_timeout}\nthaw_guard_margin = 1.0"))
    env = dict(os.environ, CGSNAP_FAULT=fault)
    return subprocess.Popen([*faultcli.COMMAND, "--config-file", str(guest.conf), "create",
                             "--all-volumes", guest.name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _frozen_span(samples):
    frozen = [t for t, v in samples if v == "frozen"]
    thawed_after = [t for t, v in samples if v == "thawed" and frozen and t > frozen[0]]
    assert frozen and thawed_after, "the guest was never seen frozen, then thawed"
    return frozen[0], thawed_after[0]


def _recover(guest):
    out = subprocess.run([CGSNAP, "--config-file", str(guest.conf), "recover", "-f", "json"],
                         capture_output=True, text=True)
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
    guard_note = json.loads(subprocess.run(
        [CGSNAP, "--config-file", str(real_guest.conf), "show", rows[0]["id"], "-f", "json"],
        capture_output=True, text=True).stdout)["status_reason"]
    assert "thaw guard" in guard_note
