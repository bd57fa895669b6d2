"""E2E tier: a real QEMU guest (TCG) running qemu-guest-agent under a real
libvirtd, built by tools/testguest/.  The guest writes fsync'ed sequence
numbers to three data disks in order d1, d2, d3 and prints ``SEQ <n>`` to its
serial console.  If the guest cannot be built or booted this tier fails.
"""

import io
import json
import os
import subprocess
import threading
import time

import libvirt
import libvirt_qemu
import pytest

from cgsnap.cli import main as cli

from ..functional.conftest import config_file_owns_the_state  # noqa: F401 (autouse)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TG = os.path.join(ROOT, "tools", "testguest", "testguest.sh")
TGDIR = os.environ.get("TESTGUEST_DIR", os.path.join(ROOT, ".testguest"))
URI = "qemu:///system"


def run_testguest(*args, timeout=300):
    proc = subprocess.run([TG, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"testguest.sh {' '.join(args)} failed:\n{proc.stderr[-2000:]}",
                    pytrace=False)
    return proc.stdout


@pytest.fixture(scope="session")
def libvirtd():
    run_testguest("build")
    run_testguest("libvirtd-start")
    yield URI
    # CGSNAP_E2E_KEEP_LIBVIRTD=1: the private libvirtd is shared (other guests run on it).
    if os.environ.get("CGSNAP_E2E_KEEP_LIBVIRTD") != "1":
        run_testguest("down")


class RealGuest:
    def __init__(self, name, tmp_path):
        self.name = name
        self.dir = os.path.join(TGDIR, "domains", name)
        self.console = os.path.join(self.dir, "console.log")
        self.conn = libvirt.open(URI)
        self.dom = self.conn.lookupByName(name)
        self.id = self.dom.UUIDString()
        self.tmp = tmp_path
        self.original = self.disk_sources()
        self.conf = tmp_path / "cgsnap.conf"
        self.write_conf()

    def write_conf(self, local_disks="qcow2", clouds_yaml=None):
        text = (f"[DEFAULT]\nstate_dir = {self.tmp}/state\n"
                f"[libvirt]\nuri = {URI}\nfreeze_timeout = 30\n"
                f"[snapshot]\nlocal_disks = {local_disks}\nlocal_dir = {self.tmp}/local\n")
        if clouds_yaml:
            text += f"[openstack]\ncloud = devcloud\nclouds_yaml = {clouds_yaml}\n"
        self.conf.write_text(text)

    def cgsnap(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        rc = cli.run(["--config-file", str(self.conf), *argv], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    def reconnect(self):
        self.conn = libvirt.open(URI)
        self.dom = self.conn.lookupByName(self.name)

    def agent(self, command):
        try:
            out = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps({"execute": command}), 10, 0)
        except libvirt.libvirtError:
            self.reconnect()  # libvirtd may have been restarted (a test does that)
            out = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps({"execute": command}), 10, 0)
        return json.loads(out)["return"]

    def freeze_status(self):
        return self.agent("guest-fsfreeze-status")

    def disk_sources(self):
        from cgsnap.drivers.libvirt_driver import parse_disks
        return {d["device"]: d["source"] for d in parse_disks(self.dom.XMLDesc(0))}

    def last_seq(self):
        with open(self.console, "rb") as f:
            f.seek(max(0, os.path.getsize(self.console) - 4096))
            complete = f.read().split(b"\n")[:-1]  # the last line may be half-written
        seqs = [ln.split()[1] for ln in complete if ln.startswith(b"SEQ ")]
        seqs = [int(x) for x in seqs if x.isdigit()]
        return seqs[-1] if seqs else 0

    def wait_progress(self, rounds=3, deadline=30):
        start = self.last_seq()
        t0 = time.monotonic()
        while self.last_seq() < start + rounds:
            if time.monotonic() - t0 > deadline:
                pytest.fail(f"guest workload made no progress in {deadline}s", pytrace=False)
            time.sleep(0.05)


@pytest.fixture(scope="module")
def real_guest_name(libvirtd):
    name = os.environ.get("CGSNAP_E2E_GUEST", "cgsnap-e2e")
    run_testguest("boot", name, "--fresh", "--interval", "0.02", timeout=180)
    yield name
    run_testguest("destroy", name)


@pytest.fixture
def real_guest(real_guest_name, tmp_path):
    g = RealGuest(real_guest_name, tmp_path)
    g.wait_progress()
    yield g
    # The contract of every test: the guest ends thawed on its original disks.
    assert g.freeze_status() == "thawed"
    assert g.disk_sources() == g.original


class Sampler(threading.Thread):
    """Samples a function every ``interval`` seconds: [(wall-clock time, value)]."""

    def __init__(self, fn, interval=0.005):
        super().__init__(daemon=True)
        self.fn, self.interval = fn, interval
        self.samples = []
        self._stop_evt = threading.Event()

    def run(self):
        while not self._stop_evt.is_set():
            try:
                self.samples.append((time.time(), self.fn()))
            except Exception as e:  # noqa: BLE001 - recorded, the test decides
                self.samples.append((time.time(), e))
            self._stop_evt.wait(self.interval)

    def stop(self):
        self._stop_evt.set()
        self.join()
        return self.samples


def longest_stall(samples):
    """Longest time the sampled value did not change: (seconds, start, end)."""
    best = (0.0, None, None)
    start_t, start_v = samples[0]
    for t, v in samples[1:]:
        if v != start_v:
            if t - start_t > best[0]:
                best = (t - start_t, start_t, t)
            start_t, start_v = t, v
    return best


def inspect_image(path, tmp_path):
    """(seq on the disk, needs_recovery flag, e2fsck -fn exit code) of a qcow2 image."""
    raw = str(tmp_path / (os.path.basename(path) + ".raw"))
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", path, raw], check=True)
    try:
        seq = subprocess.run(["debugfs", "-R", "cat /seq", raw], capture_output=True,
                             text=True).stdout.strip()
        header = subprocess.run(["dumpe2fs", "-h", raw], capture_output=True, text=True).stdout
        fsck = subprocess.run(["e2fsck", "-fn", raw], capture_output=True, text=True)
        return (int(seq) if seq.isdigit() else None, "needs_recovery" in header,
                fsck.returncode)
    finally:
        os.remove(raw)

