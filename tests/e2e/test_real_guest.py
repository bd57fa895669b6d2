"""The five proofs on a real guest: filesystem consistency (with a contrast
that shows the test can fail), cross-disk consistency, a real and short
freeze, thaw on every failure, and Cinder snapshots available before thaw."""

import datetime
import json
import os
import statistics

import pytest

from cgsnap import exception, faults

from .conftest import Sampler, inspect_image, longest_stall

DATA = ("vdb", "vdc", "vdd")


def _create(guest, *extra):
    rc, out, err = guest.cgsnap("create", "--all-volumes", guest.name, "-f", "json", *extra)
    assert rc == 0, err
    return json.loads(out)


def _epoch(iso):
    return datetime.datetime.fromisoformat(iso.rstrip("Z")).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def _seq_invariant(s1, s2, s3):
    return s1 >= s2 >= s3 >= s1 - 1


def test_frozen_sets_are_filesystem_and_cross_disk_consistent(real_guest, tmp_path):
    windows, stalls = [], []
    for _ in range(5):
        sampler = Sampler(real_guest.last_seq)
        sampler.start()
        doc = _create(real_guest)
        real_guest.wait_progress(rounds=2)
        samples = sampler.stop()
        assert doc["status"] == "available" and doc["consistency"] == "filesystem"
        assert doc["freeze"]["filesystems_frozen"] == 4
        assert [m["kind"] for m in doc["members"]] == ["local-qcow2"] * 4
        # Proof 1: every captured disk is a clean ext4 (no journal to replay).
        seqs = {}
        for m in doc["members"]:
            seq, needs_recovery, fsck_rc = inspect_image(m["path"], tmp_path)
            assert not needs_recovery, f"{m['device']} needs recovery"
            assert fsck_rc == 0, f"e2fsck -fn {m['device']} -> {fsck_rc}"
            seqs[m["device"]] = seq
        # Proof 2: the cut is one point in time across the three data disks.
        s1, s2, s3 = (seqs[d] for d in DATA)
        assert s1 and _seq_invariant(s1, s2, s3), seqs
        # Proof 3: while the guest is quiesced (freeze call returned .. thaw
        # issued) the workload makes no progress (one console line may still
        # be in flight), and it resumes after the thaw (wait_progress above).
        frozen_at, thaw_at = (_epoch(doc["freeze"][k]) for k in ("frozen_at", "thaw_started_at"))
        inside = [v for t, v in samples if frozen_at <= t <= thaw_at]
        assert inside and max(inside) - min(inside) <= 1, (inside[:3], inside[-3:])
        windows.append(doc["freeze"]["window_s"])
        stalls.append(longest_stall(samples)[0])
        assert real_guest.cgsnap("delete", doc["id"])[0] == 0
        assert not os.path.exists(os.path.dirname(doc["members"][0]["path"]))
    # ... and the longest stall is about the recorded window (medians: TCG
    # guests on a loaded 2-CPU host have their own scheduling hiccups).
    assert 0.5 * statistics.median(windows) <= statistics.median(stalls) \
        <= statistics.median(windows) + 0.5, (windows, stalls)
    print(f"\nreal guest: freeze window median {statistics.median(windows) * 1000:.0f} ms, "
          f"workload stall median {statistics.median(stalls) * 1000:.0f} ms over 5 sets")


def test_contrast_without_freeze_needs_recovery(real_guest, tmp_path):
    """The same capture without the freeze: journals need replaying.  This is
    what proves proof 1 can fail."""
    faults.arm("hypervisor.ping_agent", lambda _p: (_ for _ in ()).throw(
        exception.AgentUnreachable("agent made unreachable by the test")))
    doc = _create(real_guest, "--allow-crash-consistent")
    assert doc["consistency"] == "crash" and doc["freeze"]["filesystems_frozen"] == 0
    flags = [inspect_image(m["path"], tmp_path)[1] for m in doc["members"]
             if m["device"] in DATA]
    assert any(flags), "an unfrozen capture of busy ext4 disks should need recovery"
    assert real_guest.cgsnap("delete", doc["id"])[0] == 0


@pytest.mark.parametrize("point", [
    "hypervisor.freeze.after",            # frozen, nothing cut yet
    "hypervisor.snapshot_disks.after",    # overlays active inside the window
    "task.ThawGuest",                     # the first thaw attempt fails
    "local.copy",                         # after the thaw, during the copy
    "task.FinalizeSet",                   # everything done but the record
])
def test_any_failure_thaws_and_restores_the_disk_chain(real_guest, point):
    faults.arm(point, "raise@1")
    rc, _, err = real_guest.cgsnap("create", "--all-volumes", real_guest.name)
    assert rc != 0 and err.count("\n") == 1 and point in err
    # Proof 4, from outside cgsnap: qemu-ga itself says thawed.
    assert real_guest.freeze_status() == "thawed"
    assert real_guest.disk_sources() == real_guest.original
    assert not any(os.scandir(real_guest.tmp / "local")) if (real_guest.tmp / "local").exists() \
        else True
    real_guest.wait_progress(rounds=2)


def test_memory_state_is_captured_at_the_same_instant(real_guest, tmp_path):
    import hashlib

    import libvirt
    doc = _create(real_guest, "--memory")
    assert doc["consistency"] == "memory" and doc["freeze"]["agent"] == "not-asked"
    mem = doc["memory"]
    with open(mem["path"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == mem["sha256"]
    assert mem["size_bytes"] == os.path.getsize(mem["path"]) > 1 << 20
    assert mem["vcpus"] == 1 and mem["memory_mib"] == 256
    assert mem["host_cpu"]["arch"] == "x86_64" and mem["libvirt_version"].startswith("9.")
    assert mem["qemu_version"].count(".") == 2
    # The disks were cut at the paused instant: the cross-disk invariant holds.
    seqs = {m["device"]: inspect_image(m["path"], tmp_path)[0] for m in doc["members"]}
    assert _seq_invariant(*(seqs[d] for d in DATA)), seqs
    assert real_guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    real_guest.wait_progress(rounds=2)
    print(f"\nmemory capture: pause window {doc['freeze']['window_s'] * 1000:.0f} ms, "
          f"image {mem['size_bytes'] >> 20} MiB")
    assert real_guest.cgsnap("delete", doc["id"])[0] == 0
    assert not os.path.exists(mem["path"])


def test_memory_capture_failure_resumes_the_guest(real_guest):
    import libvirt
    faults.arm("hypervisor.snapshot_disks.after", "raise@1")
    rc, _, err = real_guest.cgsnap("create", "--all-volumes", real_guest.name, "--memory")
    assert rc != 0 and "snapshot_disks.after" in err
    assert real_guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert real_guest.disk_sources() == real_guest.original
    real_guest.wait_progress(rounds=2)
