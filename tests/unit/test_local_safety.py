"""Files under local_dir that a guest still runs on are never deleted
(issue 10, defect 1), gc looks only at set directories (defect 15), the block
commit waits on progress, not a fixed time, and paths are escaped in the
snapshot XML.

The guests are libvirt test-driver domains (real libvirt API) whose disks
point into a set directory; the images are real qcow2 files made by qemu-img.
"""

import os
import subprocess
import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest

from cgsnap import diskuse, exception, gc
from cgsnap.conf import CONF
from cgsnap.drivers import libvirt_driver
from cgsnap.tasks import local

OLD = 1_000_000_000  # an mtime far past any grace period


def _disk_domain(name, path, dev="vdb"):
    from xml.sax.saxutils import quoteattr
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
            "<memory>262144</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file={quoteattr(path)}/><target dev='{dev}' bus='virtio'/></disk>"
            "</devices></domain>")


def _qcow2(path, backing=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        cmd += ["-b", backing, "-F", "qcow2"]
    subprocess.run(cmd + [path, "16M"], check=True)
    return path


@pytest.fixture
def local_dir(tmp_path):
    CONF.set_override("local_dir", str(tmp_path / "local"), "snapshot")
    yield tmp_path / "local"
    CONF.clear_override("local_dir", "snapshot")


def _old_set_dir(set_id=None):
    set_id = set_id or str(uuid.uuid4())
    path = local.set_dir(set_id)
    os.makedirs(path, exist_ok=True)
    return set_id, path


def _age(path):
    os.utime(path, (OLD, OLD))


def _local_rows(rows):
    return [r for r in rows if r["kind"] == "local-dir"]


def test_gc_refuses_a_set_dir_a_running_guest_runs_on(guest, local_dir):
    set_id, path = _old_set_dir()
    overlay = _qcow2(os.path.join(path, "vdb.overlay.qcow2"))
    libvirt_driver.connection(guest.uri).createXML(_disk_domain("files-u1", overlay), 0)
    _age(path)
    rows = _local_rows(gc.collect(grace_s=0))
    assert os.path.exists(overlay), "gc deleted the disk a running guest writes to"
    assert [r["action"] for r in rows] == ["failed"]
    assert "files-u1" in rows[0]["reason"] and "vdb" in rows[0]["reason"]


def test_gc_refuses_a_set_dir_in_a_shut_off_guests_backing_chain(guest, local_dir, tmp_path):
    """The guest is defined, not running, and its disk is an overlay outside
    the set directory whose backing file is in it: found through qemu-img."""
    set_id, path = _old_set_dir()
    base = _qcow2(os.path.join(path, "vdc.qcow2"))
    top = _qcow2(str(tmp_path / "elsewhere" / "top.qcow2"), backing=base)
    libvirt_driver.connection(guest.uri).defineXML(_disk_domain("files-u2", top, "vdc"))
    _age(path)
    rows = _local_rows(gc.collect(grace_s=0))
    assert os.path.exists(base), "gc deleted the backing file of a defined guest's disk"
    assert [r["action"] for r in rows] == ["failed"]
    assert "files-u2" in rows[0]["reason"]


def test_gc_only_considers_set_id_directories(guest, local_dir):
    os.makedirs(local_dir, exist_ok=True)
    (local_dir / "README.txt").write_text("not cgsnap's\n")
    os.makedirs(local_dir / "keep-me")
    _, unused = _old_set_dir()
    for p in (local_dir / "README.txt", local_dir / "keep-me", unused):
        _age(p)
    rows = _local_rows(gc.collect(grace_s=0))
    assert (local_dir / "README.txt").exists() and (local_dir / "keep-me").is_dir()
    assert not os.path.exists(unused)
    assert [(r["name"], r["action"]) for r in rows] == [(os.path.basename(unused), "deleted")]


def test_delete_of_a_set_refuses_while_a_guest_runs_on_its_files(guest, local_dir):
    set_id, path = _old_set_dir()
    overlay = _qcow2(os.path.join(path, "vda.overlay.qcow2"))
    libvirt_driver.connection(guest.uri).createXML(_disk_domain("files-u3", overlay, "vda"), 0)
    with pytest.raises(diskuse.InUse) as err:
        local.DeleteLocalCopies().execute(set_id, {"instance_id": guest.id, "members": []})
    assert err.value.exit_code == exception.EXIT_CLEANUP
    assert "files-u3" in str(err.value) and "vda" in str(err.value)
    assert os.path.exists(overlay)


def test_recover_keeps_a_set_dir_another_guest_runs_on(guest, local_dir):
    """put_disks_back (reverts, recover) commits its own instance's disks,
    but another domain may run on a file in the directory too."""
    set_id, path = _old_set_dir()
    overlay = _qcow2(os.path.join(path, "vdb.overlay.qcow2"))
    libvirt_driver.connection(guest.uri).createXML(_disk_domain("files-u4", overlay), 0)
    problems = local.put_disks_back(guest.hypervisor, guest.id, [], set_id)
    assert os.path.exists(overlay)
    assert len(problems) == 1 and "files-u4" in problems[0]


def test_unknown_domains_count_as_in_use(guest, local_dir, monkeypatch):
    set_id, path = _old_set_dir()

    def broken():
        raise libvirt.libvirtError("connection reset by peer")

    monkeypatch.setattr(guest.hypervisor, "disk_users", broken)
    with pytest.raises(diskuse.InUse, match="cannot list the domains"):
        local.DeleteLocalCopies().execute(set_id, {"instance_id": guest.id, "members": []})
    assert os.path.isdir(path)


# -- the block commit follows progress -------------------------------------------

class _CommitDomain:
    """A domain whose active commit copies ``rate`` bytes per probe of ``total``;
    ``stall_at`` stops its progress there."""

    def __init__(self, total, rate, stall_at=None):
        self.total, self.rate, self.stall_at = total, rate, stall_at
        self.cur, self.job, self.pivoted, self.aborted = 0, False, False, False

    def name(self):
        return "files-stub"

    def blockCommit(self, *a):
        self.job = True

    def blockJobInfo(self, dev, flags):
        if not self.job:
            return {}
        if self.stall_at is None or self.cur < self.stall_at:
            self.cur = min(self.total, self.cur + self.rate)
        return {"type": libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT, "bandwidth": 0,
                "cur": self.cur, "end": self.total}

    def blockJobAbort(self, dev, flags):
        if flags & libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT:
            self.blockJobInfo(dev, 0)
            if self.cur < self.total:
                err = libvirt.libvirtError("block job not ready")
                err.err = (libvirt.VIR_ERR_BLOCK_COPY_ACTIVE,) + (None,) * 8
                raise err
            self.pivoted = True
        else:
            self.aborted = True
        self.job = False


def _stub_hypervisor(monkeypatch, dom):
    hyp = libvirt_driver.LibvirtHypervisor("qemu:///stub")
    monkeypatch.setattr(hyp, "_domain", lambda ref: dom)
    return hyp


def test_commit_that_keeps_progressing_outlives_the_base_deadline(monkeypatch):
    # About 60 probes at >= 10 ms each: longer than the 0.2 s base deadline,
    # but every stretch sees progress.
    dom = _CommitDomain(total=60, rate=1)
    hyp = _stub_hypervisor(monkeypatch, dom)
    hyp.commit_active_layer("x", "vdb", 0.2)
    assert dom.pivoted and not dom.aborted


def test_commit_that_stalls_fails_and_aborts_its_job(monkeypatch):
    dom = _CommitDomain(total=100, rate=1, stall_at=5)
    hyp = _stub_hypervisor(monkeypatch, dom)
    with pytest.raises(exception.SnapshotFailed, match="no progress"):
        hyp.commit_active_layer("x", "vdb", 0.2)
    assert dom.aborted and not dom.pivoted


# -- recover waits for libvirt calls still running (defect 17) -------------------

class _BusyDomain(_CommitDomain):
    """A guest on an overlay in the set directory, with a snapshot call of a
    dead cgsnap still running for ``busy_polls`` job-info queries."""

    def __init__(self, overlay, busy_polls):
        super().__init__(total=10, rate=5)
        self.overlay, self.busy_polls, self.committed_while_busy = overlay, busy_polls, None

    def XMLDesc(self, flags):
        return _disk_domain("files-stub", self.overlay if not self.pivoted else "/srv/orig.qcow2")

    def jobInfo(self):
        if self.busy_polls > 0:
            self.busy_polls -= 1
            return [libvirt.VIR_DOMAIN_JOB_UNBOUNDED] + [0] * 11
        return [libvirt.VIR_DOMAIN_JOB_NONE] + [0] * 11

    def blockCommit(self, *a):
        self.committed_while_busy = self.busy_polls > 0
        super().blockCommit(*a)


def test_recover_waits_for_a_snapshot_call_still_running(monkeypatch, local_dir):
    set_id, path = _old_set_dir()
    dom = _BusyDomain(os.path.join(path, "vdb.overlay.qcow2"), busy_polls=3)
    hyp = _stub_hypervisor(monkeypatch, dom)
    monkeypatch.setattr(hyp, "disk_users", lambda: [], raising=False)
    assert local.put_disks_back(hyp, "x", ["vdb"], set_id) == []
    assert dom.committed_while_busy is False and dom.busy_polls == 0
    assert dom.pivoted and not os.path.exists(path)


def test_recover_gives_up_on_jobs_that_never_end_and_deletes_nothing(monkeypatch, local_dir):
    set_id, path = _old_set_dir()
    dom = _BusyDomain(os.path.join(path, "vdb.overlay.qcow2"), busy_polls=10 ** 9)
    hyp = _stub_hypervisor(monkeypatch, dom)
    monkeypatch.setattr(hyp, "disk_users", lambda: [], raising=False)
    monkeypatch.setattr(local, "JOBS_DEADLINE_S", 0.3, raising=False)
    problems = local.put_disks_back(hyp, "x", ["vdb"], set_id)
    assert len(problems) == 1 and "still running" in problems[0]
    assert dom.committed_while_busy is None and os.path.isdir(path)


# -- XML escaping -------------------------------------------------------------------

class _SnapshotDomain:
    def __init__(self):
        self.xml = None

    def name(self):
        return "files-stub"

    def XMLDesc(self, flags):
        return _disk_domain("files-stub", "/var/lib/x.qcow2", "vda")

    def snapshotCreateXML(self, xml, flags):
        self.xml = xml


def test_snapshot_xml_escapes_quotes_in_paths(monkeypatch):
    dom = _SnapshotDomain()
    hyp = _stub_hypervisor(monkeypatch, dom)
    overlay = "/srv/o'brien \"&\" <dir>/vda.overlay.qcow2"
    memory = "/srv/o'brien/memory.img"
    hyp.snapshot_disks_external("x", {"vda": overlay}, memory_file=memory)
    root = ET.fromstring(dom.xml)
    assert root.find("./disks/disk/source").get("file") == overlay
    assert root.find("./memory").get("file") == memory


# -- modes (defect 10) ---------------------------------------------------------------

def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_state_and_local_files_are_private_whatever_the_umask(local_dir):
    from cgsnap import lock, state
    from cgsnap.catalog import Catalog
    old = os.umask(0o022)  # the usual loose umask: cgsnap must not depend on main's
    try:
        assert _mode(state.state_dir()) == 0o711
        Catalog(state.catalog_url()).list()
        catalog_db = os.path.join(state.state_dir(), "catalog.db")
        assert _mode(catalog_db) == 0o600
        CONF.clear_override("persistence_connection")
        assert state.persistence_url().endswith("/flows.db")
        assert _mode(os.path.join(state.state_dir(), "flows.db")) == 0o600
        with lock.instance_lock("files-modes", "test"):
            pass
        assert _mode(os.path.join(state.lock_dir(), "files-modes.lock")) == 0o600
        assert _mode(os.path.join(state.lock_dir(), "schema.lock")) == 0o600
        assert _mode(state.lock_dir()) == 0o700
        path = local.ensure_set_dir(str(uuid.uuid4()))
        assert _mode(path) == 0o711 and _mode(os.path.dirname(path)) == 0o711
    finally:
        os.umask(old)


def test_cli_main_sets_umask_077(tmp_path):
    import sys
    code = ("import os; from cgsnap.cli import main as m; "
            "m.run = lambda *a, **k: print(oct(os.umask(0o022))) or 0; m.main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(tmp_path), check=False)
    assert proc.stdout.strip() == "0o77", proc.stderr
