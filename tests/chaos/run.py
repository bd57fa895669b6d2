"""`make chaos`: a seeded soak that makes the systems AROUND cgsnap misbehave.

Each case is drawn from a weighted catalogue with its own sub-seed (derived
from ``--seed``), so a single case re-runs alone with ``--only N``.  A case
runs the real CLI (a subprocess through :mod:`tests.chaos.cgsnapw`) against
the real dev cloud (Keystone, Cinder, Glance) and either a libvirt test-driver
instance with real attached Cinder volumes ("td" cases) or ONE real QEMU guest
under the private libvirtd whose data disks carry Cinder volume ids ("rg"
cases; booted once per run).  Where the component can really misbehave here,
it does: qemu-ga is SIGSTOPped inside the guest, libvirtd is restarted, the
cgroup cgsnap runs in is killed, Cinder's process is SIGSTOPped or SIGKILLed,
PostgreSQL is restarted, a second host works on the same instance.

After each case, for every catalog the case used: ``cgsnap recover`` and
``cgsnap gc --grace-period 0``; then the invariants:

* frozen_past_deadline -- the real guest was frozen (qemu-ga's own
  guest-fsfreeze-status, sampled through the case) or paused longer than
  freeze_timeout + thaw_guard_margin + slack, or is still frozen/paused;
* orphans -- a Cinder snapshot / group snapshot of the case's volumes, a
  Glance image carrying cgsnap metadata, or an entry of local_dir, that no
  ``available`` set of any catalog the case used owns (a snapshot stuck
  ``creating`` that cgsnap named for an admin's reset does not count);
* in_use_deleted -- a file of the real guest's disk chain is gone;
* lost -- a create that exited 0 whose set is not ``available`` with all its
  members present;
* duplicates -- more than one live set for one create call (its unique
  --name) or one idempotency key;
* manifest -- ``list``/``show`` fail an integrity check (counted as a
  failed case).

The last line is the summary the Makefile and docs/safety.md quote.
"""

import argparse
import base64
import contextlib
import datetime
import faulthandler
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.chaos import cgsnapw  # noqa: E402
from tests.chaos import post as post_mod  # noqa: E402

SUMMARY_COUNTS = ("frozen_past_deadline", "orphans", "in_use_deleted", "lost", "duplicates")
# Also checked (a case fails on them), reported on the line before the summary.
EXTRA_COUNTS = ("manifest", "false_consistency")
HOOK_VARS = ("CGSNAP_FAULT", "CHAOS_BARRIER", "CHAOS_RAISE", "CHAOS_FREEZE_REPORT")

CLOUDS = os.environ.get("CGSNAP_TEST_CLOUDS_YAML", os.path.join(ROOT, ".devcloud", "clouds.yaml"))
# The dev cloud the clouds.yaml belongs to: <repo>/.devcloud/clouds.yaml.
DEVCLOUD_SH = os.environ.get("CHAOS_DEVCLOUD_SH", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(CLOUDS))), "tools", "devcloud", "devcloud.sh"))
TG = os.path.join(ROOT, "tools", "testguest", "testguest.sh")
SQLDB = os.path.join(ROOT, "tools", "sqldb.sh")
URI = "qemu:///system"

FREEZE_TIMEOUT = 3.0
AGENT_TIMEOUT = 2
GUARD_MARGIN = 1.0
SLACK = 2.0          # sampling, TCG guest and scheduling slack on a 2-core machine
FROZEN_LIMIT = FREEZE_TIMEOUT + GUARD_MARGIN + SLACK
CREATE_TIMEOUT = 120
CLEANUP_TIMEOUT = 20
# A case (its target's first boot included) that runs longer than this is hung:
# the worker prints every thread's stack and exits, so a hang is a red tier with
# the place it hung, never a CI job that runs out of time.  The slowest case of
# the 1,000-case soak took 26 s.
CASE_LIMIT = 300
# The whole ``--jobs`` run: past this the workers are asked for their stacks and
# stopped (60 cases take about 10 min on 2 cores).
RUN_BUDGET = int(os.environ.get("CHAOS_BUDGET") or 1800)


def log(msg):
    print(msg, flush=True)


def lab_module():
    """CinderLab & the test-driver helpers: the ONE place that says where they live
    (moving from cgsnap/testing.py to tests/lab.py)."""
    try:
        from tests import lab as mod  # noqa: F401
    except ImportError:
        from cgsnap import testing as mod
    return mod


class HarnessError(Exception):
    """The soak itself could not run (a real tier that cannot run fails loudly)."""


def sh(*argv, timeout=300, check=True, env=None):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-1500:]}")
    return proc


def testguest(*args, timeout=300):
    return sh(TG, *args, timeout=timeout).stdout


# ----------------------------------------------------------------- cgroups --
def cgroup_root():
    for path in (os.environ.get("CHAOS_CGROUP_ROOT"), "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if path and os.path.exists(os.path.join(path, "cgroup.procs")):
            return path
    raise HarnessError("no writable cgroup hierarchy (cgroup.procs) under /sys/fs/cgroup")


class Cgroup:
    """A cgroup of its own for one cgsnap process, killed like `systemctl stop`
    (KillMode=control-group) kills a service."""

    def __init__(self, name):
        self.path = os.path.join(cgroup_root(), name)
        os.makedirs(self.path, exist_ok=True)

    def enter(self):  # preexec_fn: runs in the child before exec
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def kill(self, grace):
        """SIGTERM every process (if grace is not None), SIGKILL what is left
        after ``grace`` seconds.  Returns the pids that were signalled."""
        hit = set()
        if grace is not None:
            for pid in self.pids():
                hit.add(pid)
                _signal(pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while self.pids() and time.monotonic() < end:
                time.sleep(0.05)
        end = time.monotonic() + 10
        while self.pids() and time.monotonic() < end:
            for pid in self.pids():
                hit.add(pid)
                _signal(pid, signal.SIGKILL)
            time.sleep(0.05)
        return sorted(hit)

    def remove(self):
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------- dev cloud ----
def cinder_pid():
    """The dev cloud's cinder process (API, scheduler and volume service in one)."""
    out = sh(DEVCLOUD_SH, "status", check=False, timeout=60).stdout
    m = re.search(r"^cinder\s+\S+\s+\S+\s+pid=(\d+)", out, re.M)
    if not m or not os.path.exists(f"/proc/{m.group(1)}"):
        raise HarnessError(f"cinder is not running ({DEVCLOUD_SH} status:\n{out})")
    return int(m.group(1))


def cinder_restart(killed_pid=None):
    """Start cinder again once the killed process has really gone: a SIGKILL
    is delivered at once but a process with many threads takes a moment to
    exit, and until then devcloud.sh sees it as running."""
    if killed_pid is not None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{killed_pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.1)
    sh(DEVCLOUD_SH, "start", timeout=300)


class Lab:
    """Admin and tenant views of the dev cloud, and the soak's volumes."""

    def __init__(self):
        if not os.path.exists(CLOUDS):
            raise HarnessError(f"dev cloud not set up ({CLOUDS} missing): run `make devcloud`")
        mod = lab_module()
        self.mod = mod
        self.lab = mod.CinderLab(CLOUDS)
        self.lab.user.limits.get()
        self._glance = None

    @property
    def glance(self):
        if self._glance is None:
            from glanceclient import Client
            self._glance = Client("2", session=self.lab.session)
        return self._glance

    def volumes(self, instance_id, n, prefix):
        return self.lab.create_attached_volumes(instance_id, n, 1, prefix)

    def snapshots_of(self, volume_ids):
        vols = set(volume_ids)
        return [s for s in self.lab.admin.volume_snapshots.list(search_opts={"all_tenants": 1})
                if s.volume_id in vols]

    def group_snapshots_of(self, group_ids):
        if not group_ids:
            return []
        return [g for g in self.lab.admin.group_snapshots.list(search_opts={"all_tenants": 1})
                if g.group_id in group_ids]

    def images_of(self, instance_ids):
        return [i for i in self.glance.images.list()
                if i.get("cgsnap_set_id") and i.get("cgsnap_instance_id") in instance_ids]

    def force_delete_snapshot(self, sid):
        try:
            self.lab.admin.volume_snapshots.reset_state(sid, "error")
        except Exception:  # noqa: BLE001 - best effort between cases
            pass
        try:
            self.lab.admin.volume_snapshots.delete(sid, force=True)
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------- targets ----
class TestDriverInstance:
    """A libvirt test-driver domain whose disks are real attached Cinder volumes."""

    kind = "td"

    def __init__(self, lab, workdir, group_type=None):
        self.lab = lab
        self.id = str(uuid.uuid4())
        self.name = f"chaos-td{'g' if group_type else ''}-{self.id[:6]}"
        self.group_type = group_type
        # With a group type, every volume is in one group: one group snapshot.
        self.group_ids = [lab.lab.create_group(group_type, f"{self.name}-group")] \
            if group_type else []
        self.volume_ids = lab.lab.create_attached_volumes(
            self.id, 3, 1, self.name, group_id=self.group_ids[0] if group_type else None)
        self.uri = lab.mod.write_node(os.path.join(workdir, f"{self.name}.xml"), [
            lab.mod.domain_xml(self.name, self.id, self.volume_ids[0], self.volume_ids[1:])])

    def conf_text(self):
        text = f"[libvirt]\nuri = {self.uri}\n[snapshot]\nlocal_disks = skip\n"
        if self.group_type:
            text += f"consistent_group_types = {self.group_type}\n"
        return text

    def teardown(self):
        self.lab.lab.delete_volumes(self.volume_ids)


class RealGuest:
    """ONE real QEMU guest (booted once per run); vdb..vdd carry the serials of
    real Cinder volumes attached to it, vda is a local qcow2 root."""

    kind = "rg"

    def __init__(self, lab, name):
        self.lab = lab
        self.name = name
        self.vols = [v.id for v in (lab.lab.user.volumes.create(1, name=f"{name}-{i}")
                                    for i in range(3))]
        for v in self.vols:
            lab.lab._wait_volume(v, "available")
        self.volume_ids = self.vols
        self.group_ids = []
        self.boot()

    def boot(self):
        os.environ.setdefault("TESTGUEST_ROOT_SIZE", "24M")  # small: quick local copies
        os.environ.setdefault("TESTGUEST_DATA_SIZE", "24M")
        testguest("boot", self.name, "--fresh", "--interval", "0.05",
                  *[a for dev, v in zip(("vdb", "vdc", "vdd"), self.vols)
                    for a in ("--serial", f"{dev}={v}")], timeout=240)
        import libvirt
        self.conn = libvirt.open(URI)
        dom = self.conn.lookupByName(self.name)
        self.id = dom.UUIDString()
        for v in self.vols:
            self.lab.lab.detach_all(v)
            self.lab.lab.admin.volumes.reset_state(v, "available", attach_status="detached")
            self.lab.lab.attach(v, self.id)
        self.original = self.chain_files()
        self.original_sources = self.sources()
        # qemu-ga's own channel, to read it while libvirtd cannot answer
        from cgsnap.drivers import agent_channel
        self.channel = agent_channel.channel_path(dom.XMLDesc(0))
        self.qemu_pid = agent_channel.qemu_pid(self.id)

    def dom(self):
        import libvirt
        for _attempt in range(20):
            try:
                return self.conn.lookupByName(self.name)
            except libvirt.libvirtError:
                time.sleep(0.25)
                try:
                    self.conn = libvirt.open(URI)
                except libvirt.libvirtError:
                    pass
        return self.conn.lookupByName(self.name)

    def sources(self):
        from cgsnap.drivers.libvirt_driver import parse_disks
        return {d["device"]: d["source"] for d in parse_disks(self.dom().XMLDesc(0))}

    def chain_files(self):
        """Every file of every disk's chain, backing files included."""
        files = set()
        for src in self.sources().values():
            if not src:
                continue
            files.add(src)
            proc = subprocess.run(["qemu-img", "info", "-U", "--backing-chain",
                                   "--output=json", src], capture_output=True, text=True)
            if proc.returncode == 0:
                for layer in json.loads(proc.stdout):
                    files.add(layer["filename"])
        return files

    def agent(self, execute, arguments=None, timeout=2):
        import libvirt_qemu
        cmd = {"execute": execute}
        if arguments:
            cmd["arguments"] = arguments
        return json.loads(libvirt_qemu.qemuAgentCommand(
            self.dom(), json.dumps(cmd), timeout, 0))["return"]

    def guest_sh(self, script, wait=False, timeout=30):
        pid = self.agent("guest-exec", {"path": "/bin/sh", "arg": ["-c", script],
                                        "capture-output": bool(wait)})["pid"]
        if not wait:
            return pid
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.agent("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                return base64.b64decode(st.get("out-data", "")).decode()
            time.sleep(0.1)
        raise HarnessError(f"guest command did not finish in {timeout}s: {script}")

    def state(self):
        """('frozen'|'thawed'|'unknown', paused?), without blocking: one libvirt
        attempt (reopened for the next sample if libvirtd restarted), and
        qemu-ga's own channel when libvirt cannot answer."""
        import libvirt
        import libvirt_qemu
        try:
            dom = self.conn.lookupByName(self.name)
            paused = dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        except Exception:  # noqa: BLE001 - libvirtd down or restarted
            try:
                self.conn = libvirt.open(URI)
            except libvirt.libvirtError:
                pass
            return self.direct_status(), None
        try:
            fs = json.loads(libvirt_qemu.qemuAgentCommand(
                dom, json.dumps({"execute": "guest-fsfreeze-status"}), 1, 0))["return"]
        except Exception:  # noqa: BLE001 - agent stalled / libvirtd reconnecting
            fs = self.direct_status()
        return fs, paused

    def direct_status(self):
        """qemu-ga's own answer over its channel, when libvirt cannot give it
        (libvirtd down or reconnecting: the channel is free then); 'unknown'
        if nobody answers (libvirtd holds the channel, or the agent stalls)."""
        from cgsnap.drivers import agent_channel
        if not self.channel:
            return "unknown"
        try:
            return agent_channel.call(self.channel, "guest-fsfreeze-status", 0.2,
                                      pid=self.qemu_pid)
        except agent_channel.ChannelError:
            return "unknown"

    def wait_agent(self, deadline=30):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                self.agent("guest-ping", timeout=2)
                return True
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        return False

    def heal(self):
        """Leave the guest thawed, running, on its original disks; reboot it if not."""
        import libvirt
        self.wait_agent(20)
        try:
            if self.dom().state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                self.dom().resume()
        except Exception:  # noqa: BLE001
            pass
        try:
            if self.agent("guest-fsfreeze-status") != "thawed":
                self.agent("guest-fsfreeze-thaw", timeout=10)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.dom().blockJobAbort("vda", 0)
        except Exception:  # noqa: BLE001
            pass
        # A disk left on an overlay (even a deleted one: QEMU holds it open) is
        # committed back, which is quicker than a reboot.
        from cgsnap.drivers.libvirt_driver import LibvirtHypervisor
        hyp = LibvirtHypervisor(URI, AGENT_TIMEOUT)
        original = self.original_sources
        for dev, src in self.sources().items():
            for attempt in (1, 2):  # the 1st call after a libvirtd restart may hit a dead socket
                if src == original.get(dev):
                    break
                try:
                    hyp.commit_active_layer(self.id, dev)
                    break
                except Exception as e:  # noqa: BLE001
                    if attempt == 2:
                        log(f"    (commit of {dev} back to its original failed: {e})")
        ok = False
        try:
            ok = (self.chain_files() == self.original and self.state()[0] == "thawed"
                  and all(os.path.exists(f) for f in self.original))
        except Exception:  # noqa: BLE001
            pass
        if not ok:
            log(f"    (rebooting {self.name}: not thawed on its original disks)")
            self.boot()

    def conf_text(self):
        return f"[libvirt]\nuri = {URI}\n[snapshot]\nlocal_disks = qcow2\n"

    def teardown(self):
        try:
            testguest("destroy", self.name)
        finally:
            self.lab.lab.delete_volumes(self.vols)


class Sampler(threading.Thread):
    """Samples the real guest's freeze (from qemu-ga) and pause state."""

    def __init__(self, guest, interval=0.1):
        super().__init__(daemon=True)
        self.guest, self.interval = guest, interval
        self.samples = []  # (monotonic, fs, paused)
        self._stop_evt = threading.Event()

    def run(self):
        while not self._stop_evt.is_set():
            fs, paused = self.guest.state()
            self.samples.append((time.monotonic(), fs, paused))
            self._stop_evt.wait(self.interval)

    def stop(self):
        self._stop_evt.set()
        self.join(10)
        return self.samples


def longest_span(samples, bad):
    """Longest time the guest was seen ``bad`` (unknown samples inside a bad
    span extend it: a stalled agent is not a thawed guest).  A span still open
    at the last sample counts up to that sample."""
    best, start = 0.0, None
    last_t = None
    for t, fs, paused in samples:
        last_t = t
        state = bad(fs, paused)
        if state is True and start is None:
            start = t
        elif state is False and start is not None:
            best = max(best, t - start)
            start = None
    if start is not None and last_t is not None:
        best = max(best, last_t - start)
    return best


def with_agent_confirmations(samples, confirmations):
    """``samples`` plus qemu-ga's own "thawed" answers that no sample could see.

    While libvirtd restarts, nobody outside can read qemu-ga for a few
    seconds: libvirtd holds the agent channel but does not answer yet.  The
    guard may have thawed through the channel just before (its record says
    when, and that the status came from the agent itself).  Such a
    confirmation counts as a "thawed" sample only if the next sample the
    harness could read is "thawed" too: a record that the harness's own
    reading contradicts is ignored."""
    out = list(samples)
    for t in confirmations:
        after = [fs for st, fs, _ in samples if st > t and fs != "unknown"]
        if after and after[0] == "thawed":
            out.append((t, "thawed", None))
    return sorted(out, key=lambda x: x[0])


def _frozen(fs, paused):
    return {"frozen": True, "thawed": False}.get(fs)


def _paused(fs, paused):
    return paused


# ------------------------------------------------------------------ a case --
class Case:
    def __init__(self, run, index, seed, kind):
        self.run, self.index, self.seed, self.kind = run, index, seed, kind
        # Not random.Random(seed): that stream's first draw picked the kind, and
        # would tie every parameter to it.
        self.rng = random.Random(f"chaos-case-{seed}")
        self.dir = os.path.join(run.workdir, f"case-{index:04d}")
        os.makedirs(self.dir)
        self.confs = []       # every config file the case used (one per catalog/host)
        self.creates = []     # {conf, rc, set_id, name, key, err}
        self.keys = set()
        self.outputs = []     # recover/gc/create text: where cgsnap names what needs an admin
        self.params = {}
        self.target = None
        self.violations = {k: [] for k in EXTRA_COUNTS + SUMMARY_COUNTS}
        self.frozen_s = 0.0
        self.paused_s = 0.0
        self.recover_env = None  # a fault that persists into the next cron's recover
        self.post_results = {}
        self.notes = []
        self.after = []  # undo of the case's own fault, run once the guest is healed

    # -- configs ---------------------------------------------------------------
    def conf(self, target, label="a", catalog=None, persistence=None, local_dir=None):
        state = os.path.join(self.dir, f"state-{label}")
        path = os.path.join(self.dir, f"cgsnap-{label}.conf")
        # Each label is a host: `[DEFAULT] host` (an unknown option is ignored by
        # a cgsnap that does not have it yet).
        text = f"[DEFAULT]\nstate_dir = {state}\nhost = chaos-host-{label}\n"
        if catalog:
            text += f"catalog_connection = {catalog}\n"
        if persistence:
            text += f"persistence_connection = {persistence}\n"
        text += (target.conf_text()
                 + f"local_dir = {local_dir or os.path.join(self.dir, 'local')}\n"
                 # waits for snapshots a killed Cinder left `creating`: 5 min by default
                 + f"cleanup_timeout = {CLEANUP_TIMEOUT}\n"
                 + f"[openstack]\ncloud = devcloud\nclouds_yaml = {CLOUDS}\n")
        text = text.replace("[libvirt]\n", f"[libvirt]\nfreeze_timeout = {FREEZE_TIMEOUT}\n"
                            f"agent_timeout = {AGENT_TIMEOUT}\n"
                            f"thaw_guard_margin = {GUARD_MARGIN}\n", 1)
        with open(path, "w") as f:
            f.write(text)
        self.confs.append(path)
        return path

    def guard_confirmations(self):
        """Monotonic times at which a guard of this case had qemu-ga itself
        (over the agent channel) confirm the guest thawed."""
        import glob
        out = []
        for conf in self.confs:
            m = re.search(r"^state_dir = (.*)$", open(conf).read(), re.M)
            for path in glob.glob(os.path.join(m.group(1), "guards", "*.json")):
                try:
                    with open(path) as f:
                        rec = json.load(f)
                    if rec.get("confirmed") and "agent channel" in (rec.get("status") or ""):
                        fired, done = (datetime.datetime.fromisoformat(
                            rec[k].replace("Z", "+00:00")) for k in ("fired_at", "confirmed_at"))
                        out.append(rec["fired_mono"] + (done - fired).total_seconds())
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return out

    def local_dirs(self):
        out = set()
        for c in self.confs:
            m = re.search(r"^local_dir = (.*)$", open(c).read(), re.M)
            out.add(m.group(1))
        return out

    # -- running the CLI -------------------------------------------------------
    def cli(self, conf, *args, env=None, timeout=120):
        e = {k: v for k, v in os.environ.items() if k not in HOOK_VARS}
        e.update(env or {})
        try:
            proc = subprocess.run([*cgsnapw.COMMAND, "--config-file", conf, *args],
                                  capture_output=True, text=True, timeout=timeout, env=e,
                                  cwd=self.dir)
        except subprocess.TimeoutExpired:
            return -1, "", f"chaos: cgsnap {' '.join(args)} hung for {timeout}s"
        self.outputs.append(proc.stdout + proc.stderr)
        return proc.returncode, proc.stdout, proc.stderr

    def start_create(self, conf, target, key=None, env=None, barrier=None, cgroup=None,
                     extra=()):
        name = f"chaos-{self.index}-{len(self.creates)}-{uuid.uuid4().hex[:6]}"
        args = ["create", "--all-volumes", target.name, "--name", name, "-f", "json", *extra]
        if key:
            args += ["--idempotency-key", key]
            self.keys.add(key)
        e = {k: v for k, v in os.environ.items() if k not in HOOK_VARS}
        e.update(env or {})
        bdir = None
        if barrier:
            bdir = tempfile.mkdtemp(dir=self.dir, prefix="barrier-")
            e["CHAOS_BARRIER"] = f"{barrier}={bdir}"
        proc = subprocess.Popen([*cgsnapw.COMMAND, "--config-file", conf, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=e, cwd=self.dir,
                                preexec_fn=cgroup.enter if cgroup else None)
        rec = {"conf": conf, "name": name, "key": key, "proc": proc, "barrier": bdir,
               "rc": None, "set_id": None, "err": ""}
        self.creates.append(rec)
        return rec

    def wait_barrier(self, rec, timeout=60):
        """True once the create reached its barrier; False if it ended first."""
        end = time.monotonic() + timeout
        path = os.path.join(rec["barrier"], "reached")
        while time.monotonic() < end:
            if os.path.exists(path):
                return True
            if rec["proc"].poll() is not None:
                return False
            time.sleep(0.01)
        return False

    @staticmethod
    def release(rec):
        if rec.get("barrier"):
            open(os.path.join(rec["barrier"], "go"), "w").close()

    def finish(self, rec, timeout=CREATE_TIMEOUT):
        proc = rec["proc"]
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # cgsnapw: every thread's stack, on stderr
            time.sleep(1)
            proc.kill()
            try:  # (a child that kept the pipes open must not hang the soak)
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out, err = "", "chaos: the create's output pipes stayed open after the kill"
            err += f"\nchaos: create hung for {timeout}s (killed; its stacks are above)"
            log(f"    create {rec['name']} hung for {timeout}s: {err[-6000:]}")
        rec["rc"], rec["err"] = proc.returncode, err.strip()
        self.outputs.append(out + err)
        if proc.returncode == 0:
            try:
                rec["set_id"] = json.loads(out)["id"]
            except (ValueError, KeyError):
                rec["rc"] = "bad-json"
        return rec

    def create(self, conf, target, **kw):
        return self.finish(self.start_create(conf, target, **kw))

    # -- after the case --------------------------------------------------------
    def post(self):
        """recover, gc --grace-period 0, list and show on every catalog the case
        used (tests/chaos/post.py: one process for all of it)."""
        spec = {"confs": self.confs, "recover_env": self.recover_env, "show_all": bool(self.keys)}
        e = {k: v for k, v in os.environ.items() if k not in HOOK_VARS}
        try:
            proc = subprocess.run([*post_mod.COMMAND, json.dumps(spec)], capture_output=True,
                                  text=True, timeout=600, env=e, cwd=self.dir)
            self.post_results = json.loads(proc.stdout)
        except (subprocess.TimeoutExpired, ValueError) as ex:
            raise HarnessError(f"post-case recover/gc did not complete: {ex}") from None
        for r in self.post_results.values():
            for cmd in ("recover", "gc"):
                self.outputs.append(r[cmd][1] + r[cmd][2])
            for cmd in ("recover", "gc", "list"):
                if r[cmd][0] != 0:
                    self.notes.append(f"{cmd} exit {r[cmd][0]}: {r[cmd][2].strip()[:300]}")

    def sets(self, conf):
        """Every set of this catalog; full documents for the available ones (and
        for all when the case used idempotency keys)."""
        r = self.post_results[conf]
        rc, out, err = r["list"]
        if rc != 0:
            self.violations["manifest"].append(f"list exit {rc}: {err.strip()[:300]}")
            return []
        docs = []
        for row in json.loads(out):
            if row.get("status") == "corrupt":
                self.violations["manifest"].append(f"set {row['id']} listed as corrupt")
            if row["id"] not in r["show"]:
                docs.append(row)
                continue
            rc, out, err = r["show"][row["id"]]
            if rc != 0:
                self.violations["manifest"].append(
                    f"show {row['id']} exit {rc}: {err.strip()[:200]}")
                docs.append(row)
            else:
                docs.append(json.loads(out))
        return docs


def _members_present(lab, doc):
    """'' if every member of an available set really exists, else what is missing."""
    missing = []
    snaps = None
    for m in doc.get("members", []):
        sid = m.get("snapshot_id")
        if sid:
            if snaps is None:
                snaps = {s.id: s.status for s in lab.lab.admin.volume_snapshots.list(
                    search_opts={"all_tenants": 1})}
            if snaps.get(sid) != "available":
                missing.append(f"{m.get('device')}:{sid}={snaps.get(sid, 'gone')}")
        path = m.get("path")
        if m.get("kind", "").startswith("local") and path and not os.path.exists(path):
            missing.append(f"{m.get('device')}:{path}=gone")
    return ", ".join(missing)


# ------------------------------------------------------------- catalogue ----
def kind(weight, target, shared=False):
    """``shared``: the case makes a component every shard uses misbehave (Cinder,
    the private libvirtd, PostgreSQL), so with ``--jobs`` it runs alone."""
    def deco(fn):
        fn.weight, fn.target, fn.shared = weight, target, shared
        CATALOGUE[fn.__name__] = fn
        return fn
    return deco


CATALOGUE = {}
INSIDE_WINDOW = ["hypervisor.freeze.after", "hypervisor.snapshot_disks.after",
                 "task.SnapshotVolumes", "volume.create_snapshot.after", "hypervisor.thaw"]


@kind(3, "td")
def td_thaw_fails_n(case, t):
    """The guest agent's thaw fails N times, then succeeds (test driver)."""
    n = case.params["n"] = case.rng.randint(1, 7)
    case.create(case.conf(t), t, env={"CHAOS_RAISE": f"hypervisor.thaw={n}"})


@kind(2, "rg")
def rg_thaw_fails_n(case, t):
    """The thaw call fails N times, then succeeds, on the real guest: qemu-ga
    must end thawed within the deadline."""
    n = case.params["n"] = case.rng.randint(1, 7)
    case.create(case.conf(t), t, env={"CHAOS_RAISE": f"hypervisor.thaw={n}"})


@kind(2, "td")
def td_fewer_filesystems(case, t):
    """The agent's freeze answer reports one filesystem fewer, or none (test driver)."""
    mode = case.params["report"] = case.rng.choice(["minus1", "zero"])
    case.create(case.conf(t), t, env={"CHAOS_FREEZE_REPORT": mode})


@kind(1, "rg")
def rg_fewer_filesystems(case, t):
    """The agent reports fewer filesystems than it froze (all 4 really frozen)."""
    mode = case.params["report"] = case.rng.choice(["minus1", "zero"])
    case.create(case.conf(t), t, env={"CHAOS_FREEZE_REPORT": mode})


@kind(2, "rg")
def rg_agent_stalls_in_window(case, t):
    """qemu-ga really stops (SIGSTOP inside the guest) the moment it has frozen,
    for S seconds, then continues: whoever thaws must keep trying."""
    s = case.params["stall_s"] = round(case.rng.uniform(0.5, 2.5), 2)
    t.guest_sh(
        "P=$(pidof qemu-ga); i=0; "
        "while [ ! -e /run/qga.state.isfrozen ] && [ $i -lt 1500 ]; do "
        "sleep 0.01; i=$((i+1)); done; "
        f"[ -e /run/qga.state.isfrozen ] && {{ kill -STOP $P; sleep {s}; kill -CONT $P; }}")
    case.create(case.conf(t), t)


@kind(1, "rg")
def rg_agent_stalls_before_freeze(case, t):
    """qemu-ga stops just before the freeze call and comes back after
    agent_timeout: the freeze times out (and may land late)."""
    s = case.params["stall_s"] = round(case.rng.uniform(AGENT_TIMEOUT + 0.5, AGENT_TIMEOUT + 3), 2)
    rec = case.start_create(case.conf(t), t, barrier="hypervisor.freeze")
    if case.wait_barrier(rec):
        t.guest_sh(f"P=$(pidof qemu-ga); (sleep 0.3; kill -STOP $P; sleep {s}; kill -CONT $P) "
                   "</dev/null >/dev/null 2>&1 &")
        time.sleep(0.6)
    case.release(rec)
    case.finish(rec)


@kind(1, "rg")
def rg_freeze_answers_late(case, t):
    """The freeze really takes longer than agent_timeout: just before it, the
    guest dirties a few MB on vdb and vdb is throttled (QEMU I/O limits), so
    fsfreeze's sync is slow; libvirt gives up after agent_timeout and the
    freeze lands later, after cgsnap's own thaw.  The throttle is lifted
    when the create returns."""
    import libvirt
    mb = case.params["dirty_mb"] = case.rng.randint(3, 8)
    bps = case.params["bytes_s"] = case.rng.choice([500_000, 1_000_000])
    rec = case.start_create(case.conf(t), t, barrier="hypervisor.freeze")
    try:
        if case.wait_barrier(rec):
            t.guest_sh(f"dd if=/dev/zero of=/mnt/d1/chaos.junk bs=1M count={mb} 2>/dev/null",
                       wait=True)
            t.dom().setBlockIoTune("vdb", {"total_bytes_sec": bps},
                                   libvirt.VIR_DOMAIN_AFFECT_LIVE)
        case.release(rec)
        case.finish(rec)
    finally:
        case.release(rec)
        t.dom().setBlockIoTune("vdb", {"total_bytes_sec": 0}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        case.after.append(lambda: t.guest_sh("rm -f /mnt/d1/chaos.junk", wait=True))


@kind(2, "rg", shared=True)
def rg_libvirtd_restart(case, t):
    """The private libvirtd is restarted inside the window (QEMU keeps running)."""
    point = case.params["at"] = case.rng.choice(INSIDE_WINDOW[:3])
    rec = case.start_create(case.conf(t), t, barrier=point)
    try:
        if case.wait_barrier(rec):
            testguest("libvirtd-stop", timeout=60)
            time.sleep(case.rng.uniform(0.0, 1.0))
    finally:
        testguest("libvirtd-start", timeout=60)
        case.release(rec)
    case.finish(rec)


def _cgroup_kill(case, t, grace, points=INSIDE_WINDOW, extra=()):
    point = case.params["at"] = case.rng.choice(points)
    case.params["grace"] = grace
    cg = Cgroup(f"chaos-{os.getpid()}-{case.index}")
    rec = case.start_create(case.conf(t), t, barrier=point, cgroup=cg, extra=extra)
    try:
        if case.wait_barrier(rec):
            case.release(rec)
            time.sleep(case.rng.uniform(0.0, 0.3))
            case.params["killed"] = len(cg.kill(grace))
        else:
            case.release(rec)
    finally:
        case.finish(rec)
        cg.kill(None)
        cg.remove()


@kind(2, "td")
def td_cgroup_stop(case, t):
    """`systemctl stop`: SIGTERM to every process of cgsnap's cgroup, SIGKILL after a grace."""
    _cgroup_kill(case, t, round(case.rng.uniform(0.5, 3.0), 1))


@kind(2, "rg")
def rg_cgroup_stop(case, t):
    """`systemctl stop` of cgsnap's service inside the window, on the real guest."""
    _cgroup_kill(case, t, round(case.rng.uniform(0.5, 3.0), 1))


@kind(3, "rg")
def rg_cgroup_kill(case, t):
    """`systemctl kill -s KILL` / a cgroup OOM kill: SIGKILL to every process
    of the cgroup at once, the thaw guard included if it is still there."""
    _cgroup_kill(case, t, None)


@kind(1, "rg")
def rg_memory_cgroup_kill(case, t):
    """`--memory` (the guest is paused, not frozen): cgsnap's cgroup is stopped
    (SIGTERM + grace) or killed (SIGKILL to all) while the guest is paused."""
    grace = case.rng.choice([None, round(case.rng.uniform(0.5, 2.0), 1)])
    points = ["hypervisor.snapshot_disks", "hypervisor.snapshot_disks.after",
              "task.SnapshotVolumes"]
    _cgroup_kill(case, t, grace, points=points, extra=("--memory",))


def _cinder_stall(case, t, points):
    point = case.params["at"] = case.rng.choice(points)
    stop_s = case.params["stop_s"] = round(case.rng.uniform(1.0, 6.0), 1)
    pid = cinder_pid()
    rec = case.start_create(case.conf(t), t, barrier=point)
    try:
        if case.wait_barrier(rec):
            os.kill(pid, signal.SIGSTOP)
            case.release(rec)
            time.sleep(stop_s)
    finally:
        os.kill(pid, signal.SIGCONT)
        case.release(rec)
    case.finish(rec)


@kind(3, "td", shared=True)
def td_cinder_sigstop(case, t):
    """cinder's process is SIGSTOPped inside the window for a few seconds."""
    _cinder_stall(case, t, ["hypervisor.freeze.after", "task.SnapshotVolumes",
                            "volume.create_snapshot"])


@kind(2, "rg", shared=True)
def rg_cinder_sigstop(case, t):
    """cinder's process is SIGSTOPped inside the real guest's window."""
    _cinder_stall(case, t, ["hypervisor.freeze.after", "task.SnapshotVolumes",
                            "volume.create_snapshot"])


@kind(2, "tdg", shared=True)
def tdg_cinder_sigstop(case, t):
    """A consistency-group instance (one group snapshot): cinder's process is
    SIGSTOPped inside the window."""
    _cinder_stall(case, t, ["task.SnapshotVolumes", "volume.create_group_snapshot.after",
                            "volume.get_group_snapshot"])


@kind(1, "tdg")
def tdg_cgroup_stop(case, t):
    """A consistency-group instance: `systemctl stop` inside the window or
    while the group snapshot's members are tagged."""
    _cgroup_kill(case, t, round(case.rng.uniform(0.5, 3.0), 1),
                 points=["volume.create_group_snapshot.after", "task.TagGroupSnapshotMembers"])


@kind(1, "td", shared=True)
def td_cinder_sigkill(case, t):
    """cinder's process is SIGKILLed inside the window, then restarted (rare:
    the dev cloud is shared)."""
    point = case.params["at"] = case.rng.choice(["task.SnapshotVolumes",
                                                 "volume.create_snapshot.after"])
    pid = cinder_pid()
    rec = case.start_create(case.conf(t), t, barrier=point)
    try:
        if case.wait_barrier(rec):
            os.kill(pid, signal.SIGKILL)
            case.release(rec)
            case.finish(rec)
    finally:
        case.release(rec)
        cinder_restart(pid)
    if rec["rc"] is None:
        case.finish(rec)


@kind(2, "rg")
def rg_blockcommit_fails(case, t):
    """libvirt's block commit back to the original disk fails (the revert's too)."""
    # The condition lasts (a large, busy disk outlives the commit's limit): the
    # next cron's recover meets it too; gc comes after.
    case.recover_env = {"CHAOS_RAISE": "hypervisor.block_commit=99"}
    case.create(case.conf(t), t, env={"CHAOS_RAISE": "hypervisor.block_commit=2"})


@kind(3, "td")
def td_second_host_gc(case, t):
    """Live migration: host A's catalog holds available sets of the instance,
    host B (its own catalog) takes a set and runs gc."""
    shared = None
    if case.rng.random() < 0.5:  # two host names on one shared catalog
        shared = f"sqlite:///{os.path.join(case.dir, 'shared-catalog.db')}"
    case.params["shared_catalog"] = bool(shared)
    a, b = case.conf(t, "a", catalog=shared), case.conf(t, "b", catalog=shared)
    case.create(a, t)
    case.create(b, t)
    case.cli(b, "gc", "--grace-period", "0", "-f", "json")


@kind(2, "td")
def td_shared_catalog_recover(case, t):
    """Two hosts, one shared catalog: B's recover runs while A is inside its window."""
    shared = f"sqlite:///{os.path.join(case.dir, 'shared-catalog.db')}"
    a, b = case.conf(t, "a", catalog=shared), case.conf(t, "b", catalog=shared)
    # Inside A's window, or after A's thaw just before A finalizes.
    point = case.params["at"] = case.rng.choice(["task.SnapshotVolumes", "task.FinalizeSet",
                                                 "task.FinalizeSet"])
    rec = case.start_create(a, t, barrier=point)
    try:
        if case.wait_barrier(rec):
            case.cli(b, "recover", "-f", "json")
    finally:
        case.release(rec)
    case.finish(rec)


@kind(2, "td")
def td_idempotency_after_failure(case, t):
    """One idempotency key: a failed attempt, then a success, then a retry."""
    conf = case.conf(t)
    key = f"chaos-key-{uuid.uuid4().hex[:8]}"
    case.create(conf, t, key=key, env={"CGSNAP_FAULT": "volume.create_snapshot:raise@1"})
    case.create(conf, t, key=key)
    case.create(conf, t, key=key)


@kind(1, "td", shared=True)
def td_postgres_restart(case, t):
    """A shared catalog (and logbooks) on PostgreSQL, restarted during a create (rare:
    the server is shared)."""
    url = case.run.pg_url()
    conf = case.conf(t, catalog=url, persistence=url)
    point = case.params["at"] = case.rng.choice(["task.SnapshotVolumes", "task.FinalizeSet",
                                                 "task.RecordSet"])
    rec = case.start_create(conf, t, barrier=point)
    try:
        if case.wait_barrier(rec):
            ver = sorted(os.listdir("/etc/postgresql"))[0]
            sh("pg_ctlcluster", "--skip-systemctl-redirect", ver, "main", "restart", timeout=60)
    finally:
        case.release(rec)
    case.finish(rec)


# ------------------------------------------------------------------ the run --
class Turns:
    """Who may run a case now, across the shards of one ``--jobs`` run: ordinary
    cases share the machine, a ``shared`` kind runs alone.  A reader/writer lock
    on two files (flock): the turnstile makes a waiting writer block new
    readers, so a shared case is not starved by the other shards' stream of
    ordinary ones.  With one job it locks nothing."""

    def __init__(self, lockdir):
        self.lockdir = lockdir

    @contextlib.contextmanager
    def turn(self, alone):
        if not self.lockdir:
            yield
            return
        with open(os.path.join(self.lockdir, "turnstile"), "a") as gate, \
                open(os.path.join(self.lockdir, "cases"), "a") as cases:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(cases, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
            finally:
                if not alone:
                    fcntl.flock(gate, fcntl.LOCK_UN)
            try:
                yield
            finally:
                fcntl.flock(cases, fcntl.LOCK_UN)
                fcntl.flock(gate, fcntl.LOCK_UN)


class Run:
    def __init__(self, seed, n, only=None, kinds=None, keep=False, verbose=False,
                 shard=None, lockdir=None, results_path=None):
        self.seed, self.n, self.only, self.keep = seed, n, only, keep
        self.results_path = results_path
        self.verbose = verbose
        self.kinds = kinds
        # (k, jobs): this process runs the cases whose index % jobs == k
        self.shard = shard
        self.turns = Turns(lockdir)
        self.workdir = None
        self.lab = None
        self.targets = {}
        self._pg = None
        self.results = []
        self.swept = set()  # snapshots the sweep force-deleted (they may linger 'deleting')

    def plan(self):
        rng = random.Random(self.seed)
        names = [k for k in CATALOGUE if not self.kinds or k in self.kinds]
        if not names:
            raise HarnessError(f"no case kind matches {self.kinds}")
        weights = [CATALOGUE[k].weight for k in names]
        out = []
        for i in range(self.n):
            sub = rng.getrandbits(32)
            out.append((i, sub, random.Random(sub).choices(names, weights)[0]))
        return out

    def target(self, which):
        if which not in self.targets:
            with self.turns.turn(alone=True):
                self._make_target(which)
        return self.targets[which]

    def _make_target(self, which):
        if which == "td":
            self.targets[which] = TestDriverInstance(self.lab, self.workdir)
        elif which == "tdg":
            self.targets[which] = TestDriverInstance(self.lab, self.workdir, "fake-consistent")
        else:
            testguest("build", timeout=900)
            testguest("libvirtd-start", timeout=120)
            self.targets[which] = RealGuest(self.lab, f"chaos-g{os.getpid()}")

    @property
    def pg_name(self):
        return "cgsnap_chaos" if self.shard is None else f"cgsnap_chaos_{self.shard[0]}"

    def pg_url(self):
        """A fresh (re-created) PostgreSQL database for this case."""
        self._pg = sh(SQLDB, "url", "postgresql", self.pg_name, timeout=600).stdout.strip()
        return self._pg

    def run_case(self, index, seed, kname):
        fn = CATALOGUE[kname]
        # faulthandler's own thread: it fires even while the main thread is
        # blocked inside a C call (libvirt, a socket) that no signal would break;
        # it prints "Timeout" and every thread's stack, and the worker exits 1.
        faulthandler.dump_traceback_later(CASE_LIMIT, exit=True)
        try:
            t = self.target(fn.target)
            with self.turns.turn(alone=fn.shared):
                return self._run_case(index, seed, kname, fn, t)
        finally:
            faulthandler.cancel_dump_traceback_later()
            if self.results_path:  # what ran so far survives a later hang
                with open(self.results_path + ".tmp", "w") as f:
                    json.dump(self.results, f)
                os.replace(self.results_path + ".tmp", self.results_path)

    def _run_case(self, index, seed, kname, fn, t):
        case = Case(self, index, seed, kname)
        case.target = t
        t0 = time.monotonic()
        sampler = None
        before = set()
        if t.kind == "rg":
            before = t.chain_files()
            sampler = Sampler(t)
            sampler.start()
        error = None
        try:
            fn(case, t)
        except HarnessError:
            raise
        except Exception:  # noqa: BLE001 - a harness bug: reported, the case fails
            error = traceback.format_exc(limit=5)
        for rec in case.creates:
            if rec["rc"] is None:
                case.release(rec)
                case.finish(rec)
        phases = {"scenario": time.monotonic() - t0}
        if sampler:
            # Before any recover: the promise is that nobody has to come by.
            self.wait_out_window(sampler)
            phases["window"] = time.monotonic() - t0 - sum(phases.values())
        # What the next cron run does, on every host/catalog the case used.
        case.post()
        phases["recover+gc"] = time.monotonic() - t0 - sum(phases.values())
        if sampler:
            time.sleep(0.2)
            samples = with_agent_confirmations(sampler.stop(), case.guard_confirmations())
            case.frozen_s = longest_span(samples, _frozen)
            case.paused_s = longest_span(samples, _paused)
            fs, paused = t.state()
            if fs == "unknown" and t.wait_agent(15):
                fs, paused = t.state()
            if case.frozen_s > FROZEN_LIMIT or fs != "thawed":
                case.violations["frozen_past_deadline"].append(
                    f"frozen {case.frozen_s:.1f}s (limit {FROZEN_LIMIT:.1f}s), now {fs}")
            if case.paused_s > FROZEN_LIMIT or paused:
                case.violations["frozen_past_deadline"].append(
                    f"paused {case.paused_s:.1f}s, now {'paused' if paused else 'running'}")
        self.check(case, t, before)
        phases["check"] = time.monotonic() - t0 - sum(phases.values())
        secs = time.monotonic() - t0
        self.sweep(case, t)
        phases["sweep"] = time.monotonic() - t0 - sum(phases.values())
        if self.verbose:
            log("    phases: " + " ".join(f"{k}={v:.1f}s" for k, v in phases.items()))
        ok = not error and not any(case.violations.values())
        res = {"index": index, "seed": seed, "kind": kname, "ok": ok, "secs": secs,
               "counts": {k: len(v) for k, v in case.violations.items()},
               "params": case.params, "error": error,
               "rcs": [r["rc"] for r in case.creates]}
        self.results.append(res)
        status = "ok" if ok else "FAIL"
        extra = f" frozen={case.frozen_s:.1f}s" if t.kind == "rg" else ""
        log(f"case {index} seed={seed} {kname} {case.params} rc={res['rcs']}{extra} "
            f"{secs:.1f}s {status}")
        for k, v in case.violations.items():
            for item in v:
                log(f"    {k}: {item}")
        if error:
            log("    harness error: " + error.strip().replace("\n", "\n    "))
        if not ok or self.verbose:
            if t.kind == "rg":
                log(f"    paused={case.paused_s:.1f}s")
            for r in case.creates:
                if r["err"]:
                    log(f"    create {r['name']} rc={r['rc']}: {r['err'].splitlines()[-1][:300]}")
            if not ok:
                for conf, r in case.post_results.items():
                    for cmd in ("recover", "gc"):
                        rc, out, err = r[cmd]
                        text = (out + err).strip().replace("\n", "\n      ")
                        log(f"    {cmd} ({os.path.basename(conf)}) rc={rc}:\n      {text[-1500:]}")
        return res

    @staticmethod
    def wait_out_window(sampler):
        """If the guest was seen frozen and is not seen thawed since, wait until the
        deadline (first frozen sample + the limit) has passed or it thaws (paused:
        the same, until it runs)."""
        def open_freeze():
            first = None
            for t, fs, paused in list(sampler.samples):
                if (fs == "frozen" or paused) and first is None:
                    first = t
                elif fs != "frozen" and paused is False:
                    first = None
            return first
        first = open_freeze()
        while first is not None and time.monotonic() < first + FROZEN_LIMIT + 0.5:
            time.sleep(0.1)
            first = open_freeze()

    def check(self, case, t, before):
        live, by_name, by_key = {}, {}, {}
        for conf in case.confs:
            for doc in case.sets(conf):
                if doc.get("status") == "available":
                    live[doc["id"]] = doc
                if doc.get("status") in ("available", "creating"):
                    by_name.setdefault(doc.get("name"), set()).add(doc["id"])
                    if doc.get("idempotency_key"):
                        by_key.setdefault(doc["idempotency_key"], set()).add(doc["id"])
        # false_consistency: an available set claims filesystem consistency that the
        # window cannot back (over freeze_timeout, or nothing frozen)
        for doc in live.values():
            if doc.get("consistency") != "filesystem":
                continue
            fr = doc.get("freeze") or {}
            window = fr.get("window_s") or 0.0
            if len(case.creates) == 1 and t.kind == "rg":
                window = max(window, case.frozen_s)
            if window > FREEZE_TIMEOUT or not fr.get("filesystems_frozen"):
                case.violations["false_consistency"].append(
                    f"set {doc['id']} is filesystem-consistent with window {window:.2f}s "
                    f"(freeze_timeout {FREEZE_TIMEOUT}s), filesystems_frozen="
                    f"{fr.get('filesystems_frozen')}")
        # duplicates
        for name, ids in by_name.items():
            if len(ids) > 1:
                case.violations["duplicates"].append(f"name {name}: {sorted(ids)}")
        for key, ids in by_key.items():
            if len(ids) > 1:
                case.violations["duplicates"].append(f"idempotency key {key}: {sorted(ids)}")
        # lost
        for rec in case.creates:
            if rec["rc"] != 0:
                continue
            doc = live.get(rec["set_id"])
            if doc is None:
                case.violations["lost"].append(f"create {rec['name']} exited 0, set "
                                               f"{rec['set_id']} is not available")
                continue
            missing = _members_present(self.lab, doc)
            if missing:
                case.violations["lost"].append(f"set {rec['set_id']} available but {missing}")
        # orphans: Cinder, Glance, local files
        text = "\n".join(case.outputs)
        live_snaps = {m.get("snapshot_id") for d in live.values() for m in d.get("members", [])}
        for s in self.lab.snapshots_of(t.volume_ids):
            if s.id in self.swept:
                continue
            if s.id in live_snaps or (s.metadata or {}).get("cgsnap_set_id") in live:
                continue
            if s.status == "creating" and f"snapshot set --state error {s.id}" in text:
                continue  # cgsnap named it, with the command for an admin's reset
            case.violations["orphans"].append(
                f"snapshot {s.id} ({s.status}, set {(s.metadata or {}).get('cgsnap_set_id')})")
        live_groups = {(d.get("group_snapshot") or {}).get("id") for d in live.values()}
        for g in self.lab.group_snapshots_of(t.group_ids):
            if g.id not in live_groups:
                case.violations["orphans"].append(f"group snapshot {g.id} ({g.status})")
        for img in self.lab.images_of({t.id}):
            if img.get("cgsnap_set_id") not in live:
                case.violations["orphans"].append(f"image {img['id']} (set {img['cgsnap_set_id']})")
        # A set directory the guest still runs on is not an orphan when cgsnap
        # refused to delete it and kept its set for the next recover
        # (cleanup_pending): deleting it would lose the guest's writes.
        in_use = t.chain_files() if t.kind == "rg" else set()
        pending = {doc["id"] for conf in case.confs for doc in case.sets(conf)
                   if doc.get("cleanup_pending")}
        for d in case.local_dirs():
            if os.path.isdir(d):
                for entry in os.listdir(d):
                    path = os.path.join(d, entry)
                    if entry in live or (entry in pending and any(
                            f.startswith(path + os.sep) for f in in_use)):
                        continue
                    why = ("its set is not cleanup_pending" if any(
                        f.startswith(path + os.sep) for f in in_use) else
                        "no disk uses it" if entry in pending else "not live, not pending")
                    case.violations["orphans"].append(f"local file {path} ({why})")
        # in_use_deleted
        if t.kind == "rg":
            now = t.chain_files() | before
            for f in sorted(now):
                if not os.path.exists(f):
                    case.violations["in_use_deleted"].append(f"{f} (in the disk chain) is gone")

    def sweep(self, case, t):
        """Start the next case clean, whatever this one left (after counting).
        The case's catalogs are thrown away with its directory."""
        for gid in t.group_ids:  # group snapshots first: Cinder keeps their members
            try:
                self.lab.lab.delete_group_snapshots(gid)
            except Exception as e:  # noqa: BLE001
                log(f"    (group snapshot cleanup of {gid}: {e})")
        for s in self.lab.snapshots_of(t.volume_ids):
            if s.id not in self.swept:
                self.swept.add(s.id)
                self.lab.force_delete_snapshot(s.id)
        for img in self.lab.images_of({t.id}):
            try:
                self.lab.glance.images.delete(img["id"])
            except Exception:  # noqa: BLE001
                pass
        if t.kind == "rg":
            t.heal()
        for fn in case.after:
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log(f"    (undo failed: {e})")
        if not self.keep:
            in_use = t.chain_files() if t.kind == "rg" else set()
            if not any(f.startswith(case.dir + os.sep) for f in in_use):
                shutil.rmtree(case.dir, ignore_errors=True)

    def mine(self, index):
        if self.only is not None and index not in self.only:
            return False
        return self.shard is None or index % self.shard[1] == self.shard[0]

    def main(self):
        plan = self.plan()
        self.workdir = tempfile.mkdtemp(prefix="cgsnap-chaos-")
        log(f"chaos: seed={self.seed} cases={self.n} workdir={self.workdir} "
            f"freeze_timeout={FREEZE_TIMEOUT}s agent_timeout={AGENT_TIMEOUT}s "
            f"frozen limit={FROZEN_LIMIT}s")
        rc = 0
        try:
            self.lab = Lab()
            for index, seed, kname in plan:
                if self.mine(index):
                    self.run_case(index, seed, kname)
        except HarnessError as e:
            log(f"chaos: cannot run: {e}")
            rc = 2
        except KeyboardInterrupt:
            log(f"chaos: interrupted after {len(self.results)} cases; cleaning up")
            rc = 130
        finally:
            for t in self.targets.values():
                try:
                    t.teardown()
                except Exception as e:  # noqa: BLE001
                    log(f"chaos: teardown of {t.name} failed: {e}")
            if self._pg:
                sh(SQLDB, "drop", "postgresql", self.pg_name, check=False)
            if not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
        if self.shard is not None:  # a worker of run_jobs(): the parent sums up
            return rc
        return self.summary() or rc

    def summary(self):
        res = self.results
        totals = {k: sum(r["counts"][k] for r in res) for k in SUMMARY_COUNTS + EXTRA_COUNTS}
        passed = sum(r["ok"] for r in res)
        failed = [r for r in res if not r["ok"]]
        if res:
            slow = max(res, key=lambda r: r["secs"])
            log(f"slowest case: {slow['index']} {slow['kind']} seed={slow['seed']} "
                f"({slow['secs']:.1f}s)")
        for r in failed:
            broke = ",".join(k for k, v in r["counts"].items() if v) or "harness error"
            kinds = f" CHAOS_KINDS={','.join(sorted(self.kinds))}" if self.kinds else ""
            log(f"failed: case {r['index']} {r['kind']} seed={r['seed']} ({broke}); re-run: "
                f"make chaos CHAOS_SEED={self.seed} CHAOS_CASES={self.n}{kinds} "
                f"CHAOS_ONLY={r['index']}")
        log("chaos: also " + ", ".join(f"{k}={totals[k]}" for k in EXTRA_COUNTS))
        log(f"chaos: {len(res)} cases, {passed} passed, {len(res) - passed} failed, "
            f"frozen_past_deadline={totals['frozen_past_deadline']}, "
            f"orphans={totals['orphans']}, in_use_deleted={totals['in_use_deleted']}, "
            f"lost={totals['lost']}, duplicates={totals['duplicates']}, seed={self.seed}")
        return 0 if res and passed == len(res) else 1


def run_jobs(args, seed, jobs):
    """``--jobs N``: N worker processes (this script with ``--shard k/N``) run the
    cases whose index % N == k, each with its own targets (test-driver
    instances, one real guest each) and catalogs; kinds that disturb a shared
    component run alone (:class:`Turns`).  The case lines stream as they come;
    the summary covers every case."""
    lockdir = tempfile.mkdtemp(prefix="cgsnap-chaos-turns-")
    out = {}
    procs = []
    try:
        for k in range(jobs):
            out[k] = os.path.join(lockdir, f"results-{k}.json")
            argv = [sys.executable, os.path.abspath(__file__), "--cases", str(args.cases),
                    "--seed", str(seed), "--shard", f"{k}/{jobs}", "--results", out[k],
                    "--lockdir", lockdir]
            for flag, value in (("--only", args.only), ("--kinds", args.kinds)):
                if value:
                    argv += [flag, value]
            argv += ["--keep"] * args.keep + ["--verbose"] * args.verbose
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1))
        pumps = [threading.Thread(target=_pump, args=(p.stdout, f"[{k}] "), daemon=True)
                 for k, p in enumerate(procs)]
        for t in pumps:
            t.start()
        rcs = _wait_all(procs, RUN_BUDGET)
        for t in pumps:
            t.join()
        runner = Run(seed, args.cases, kinds=set(args.kinds.split(",")) if args.kinds else None)
        for k in range(jobs):
            try:
                with open(out[k]) as f:
                    runner.results += json.load(f)
            except (OSError, ValueError):
                log(f"chaos: shard {k} wrote no results (exit {rcs[k]})")
        runner.results.sort(key=lambda r: r["index"])
        log(f"chaos: {jobs} jobs, shard exits {rcs}")
        done = {r["index"] for r in runner.results}
        only = {int(x) for x in args.only.split(",")} if args.only else None
        unfinished = [i for i, _seed, _k in runner.plan()
                      if i not in done and (only is None or i in only)]
        if unfinished:
            log(f"chaos: case(s) {unfinished} did not finish: a worker hung (its stack is "
                f"above, after 'Timeout') or was stopped at the run's budget")
        rc = runner.summary() or (1 if unfinished else 0)
        return rc or max(rcs) or (2 if any(not os.path.exists(o) for o in out.values()) else 0)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        return 130
    finally:
        shutil.rmtree(lockdir, ignore_errors=True)


def _wait_all(procs, budget):
    """The workers' exit codes; past ``budget`` seconds each one still running
    prints its stacks (SIGUSR1) and is stopped (SIGINT: it cleans up), then killed."""
    end = time.monotonic() + budget
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    late = [p for p in procs if p.poll() is None]
    if late:
        log(f"chaos: the run took more than its budget of {budget}s (CHAOS_BUDGET); "
            f"stopping {len(late)} worker(s), their stacks follow")
        for p in late:
            p.send_signal(signal.SIGUSR1)
        time.sleep(1)
        for p in late:
            p.send_signal(signal.SIGINT)
        for p in late:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return [p.returncode if p.returncode >= 0 or p not in late else 124 for p in procs]


def _pump(stream, prefix):
    for line in stream:
        if line.startswith("chaos: ") and "seed=" in line and "workdir=" in line:
            line = line.replace("chaos: ", "chaos: shard ", 1)
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=int(os.environ.get("CHAOS_CASES") or 60))
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--only", default=os.environ.get("CHAOS_ONLY") or None,
                   help="comma-separated case numbers to run alone (same seed and cases)")
    p.add_argument("--kinds", default=os.environ.get("CHAOS_KINDS") or None,
                   help="comma-separated case kinds to draw from (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--list-kinds", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="print each case's phase times")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("CHAOS_JOBS") or 1),
                   help="cases run side by side in N worker processes (each its own "
                        "targets); kinds that disturb a shared component run alone")
    p.add_argument("--shard", help=argparse.SUPPRESS)    # k/N: a worker of --jobs
    p.add_argument("--results", help=argparse.SUPPRESS)  # where a worker writes its results
    p.add_argument("--lockdir", help=argparse.SUPPRESS)  # the workers' Turns
    args = p.parse_args(argv)
    if args.list_kinds:
        for k, fn in CATALOGUE.items():
            print(f"{k:32} weight {fn.weight}  {(fn.__doc__ or '').strip().splitlines()[0:1]}")
        return 0
    seed = args.seed
    if seed is None:
        env = os.environ.get("CHAOS_SEED")
        seed = int(env) if env else random.SystemRandom().randrange(1, 2**31)
    only = {int(x) for x in args.only.split(",")} if args.only else None
    kinds = set(args.kinds.split(",")) if args.kinds else None
    if args.jobs > 1 and not args.shard:
        return run_jobs(args, seed, args.jobs)
    shard = tuple(int(x) for x in args.shard.split("/")) if args.shard else None
    if args.shard:  # the parent asks for the stacks before it stops a worker
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    runner = Run(seed, args.cases, only, kinds, args.keep, args.verbose, shard, args.lockdir,
                 args.results)
    rc = runner.main()
    if args.results:
        with open(args.results, "w") as f:
            json.dump(runner.results, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
