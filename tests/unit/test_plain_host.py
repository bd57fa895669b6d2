"""A plain libvirt host tried as a new user would (issue 10, defects 17, 11, 15):
file-backed disks without serials, no OpenStack configured, the CLI in-process
on libvirt's test driver.

The test driver cannot take disk-only snapshots; where a test needs the
pre-checks of a hypervisor that can (QEMU), ``qemu_like`` says so, and
every case here is refused or finished before any snapshot call.
"""

import io
import json
import os
import subprocess

import pytest

from cgsnap import exception
from cgsnap.cli import main as cli
from cgsnap.drivers import libvirt_driver

from .. import lab as testlab

OS_VARS = ("OS_CLOUD", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME",
           "OS_CLIENT_CONFIG_FILE", "OS_TOKEN", "OS_AUTH_TYPE")


def _disk(dev, source, bus="virtio", device="disk", extra="", fmt="qcow2", boot=None):
    boot_el = f"<boot order='{boot}'/>" if boot else ""
    return (f"<disk type='file' device='{device}'><driver name='qemu' type='{fmt}'/>"
            f"<source file='{source}'>{extra}</source><target dev='{dev}' bus='{bus}'/>"
            f"{boot_el}</disk>\n")


def _domain(name, uuid, disks, os_boot=""):
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<memory>262144</memory><vcpu>1</vcpu><os><type>hvm</type>{os_boot}</os>"
            f"<devices>\n{''.join(disks)}</devices></domain>\n")


class PlainHost:
    """A guest with four file-backed disks and no serials; no OpenStack at all."""

    def __init__(self, tmp_path, monkeypatch, disks=None, name="plain1"):
        for var in OS_VARS:
            monkeypatch.delenv(var, raising=False)
        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))  # no ~/.config/openstack/clouds.yaml
        monkeypatch.chdir(tmp_path)             # no ./clouds.yaml, no ./cgsnap.conf
        self.tmp = tmp_path
        self.name = name
        self.id = testlab.new_instance_id()
        if disks is None:
            disks = []
            for dev in ("vda", "vdb", "vdc", "vdd"):
                path = tmp_path / f"{dev}.qcow2"
                path.write_bytes(b"\0" * 4096)
                disks.append(_disk(dev, path))
        self.uri = testlab.write_node(str(tmp_path / "node.xml"),
                                      [_domain(name, self.id, disks)])
        self.state = tmp_path / "clistate"
        self.conf = tmp_path / "cgsnap.conf"
        self.write_conf()

    def write_conf(self, **snapshot):
        lines = [f"[DEFAULT]\nstate_dir = {self.state}\n[libvirt]\nuri = {self.uri}\n"]
        if snapshot:
            lines.append("[snapshot]\n" + "".join(f"{k} = {v}\n" for k, v in snapshot.items()))
        self.conf.write_text("".join(lines))

    def run(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        rc = cli.run(["--config-file", str(self.conf)] + list(argv), stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    @staticmethod
    def local_root():
        from cgsnap.tasks import local
        return os.path.dirname(local.set_dir("x"))  # the conftest's state_dir wins

    def sets(self, status=None):
        argv = ["list", "-f", "json"] + (["--status", status] if status else [])
        rc, out, err = self.run(*argv)
        assert rc == 0, err
        return json.loads(out)


@pytest.fixture
def plain(tmp_path, monkeypatch):
    return PlainHost(tmp_path, monkeypatch)


@pytest.fixture
def qemu_like(monkeypatch):
    """The pre-checks of a hypervisor that can take disk-only snapshots; any
    freeze is recorded, so a test can prove none happened."""
    monkeypatch.setattr(libvirt_driver.LibvirtHypervisor, "supports_disk_snapshots",
                        lambda self: True)
    freezes = []
    real_freeze = libvirt_driver.LibvirtHypervisor.freeze

    def freeze(self, instance_id):
        freezes.append(instance_id)
        return real_freeze(self, instance_id)
    monkeypatch.setattr(libvirt_driver.LibvirtHypervisor, "freeze", freeze)
    return freezes


def _one_line(err):
    assert err.count("\n") == 1 and err.startswith("cgsnap: error: "), err
    assert "Traceback" not in err


# -- defect 17: the default config on a host without OpenStack ------------------

def test_default_config_without_openstack_is_refused_with_advice(plain, qemu_like):
    rc, _, err = plain.run("create", plain.name)
    _one_line(err)
    assert rc == exception.EXIT_REFUSED, err
    assert "local_disks = qcow2" in err and "credentials" in err and "vda" in err
    assert "auth_url" not in err
    assert qemu_like == []
    # nothing left behind: no set directory, and the refused set needs no backend
    assert not os.path.exists(plain.local_root()) or os.listdir(plain.local_root()) == []


def test_refused_set_on_plain_host_deletes_without_credentials(plain, qemu_like):
    rc, _, err = plain.run("create", plain.name)
    assert rc == exception.EXIT_REFUSED, err
    [failed] = plain.sets("failed")
    rc, out, err = plain.run("delete", failed["id"])
    assert rc == 0, err
    assert plain.sets() == []


def test_gc_without_openstack_skips_the_cloud_and_says_so_once(plain, qemu_like):
    plain.run("create", plain.name)
    rc, out, err = plain.run("gc", "--dry-run", "--grace-period", "0", "-f", "json")
    assert rc == 0, err
    assert err.count("no OpenStack credentials") == 1, err
    assert "Cinder" in err and "Glance" in err
    assert json.loads(out) == []


def test_empty_set_dir_removed_when_a_later_precheck_fails(plain, qemu_like):
    plain.write_conf(local_disks="qcow2")
    # the agent check comes after CheckLocalDisks made the set's directory
    from cgsnap import faults
    faults.arm("task.CheckAgent")
    rc, _, err = plain.run("create", "--all-volumes", plain.name)
    assert rc != 0
    assert not os.path.exists(plain.local_root()) or os.listdir(plain.local_root()) == []


def test_set_that_would_capture_nothing_is_refused_before_the_freeze(plain, qemu_like):
    rc, out, err = plain.run("create", "--all-volumes", "--exclude-root", plain.name)
    _one_line(err)
    assert rc == exception.EXIT_REFUSED, err
    assert "nothing" in err and "vdb, vdc, vdd" in err and "local_disks = qcow2" in err
    assert qemu_like == []
    assert [s for s in plain.sets() if s["status"] == "available"] == []


def test_exclude_root_without_all_volumes_names_the_option(plain, qemu_like):
    plain.write_conf(local_disks="qcow2")
    rc, _, err = plain.run("create", "--exclude-root", plain.name)
    assert rc == exception.EXIT_REFUSED, err
    assert "nothing" in err and "--all-volumes" in err
    assert qemu_like == []


def test_help_lists_the_real_config_search_and_what_all_volumes_takes(plain, capsys):
    assert plain.run("--help")[0] == 0
    text = " ".join(capsys.readouterr().out.split())
    paths = ["--config-file", "$CGSNAP_CONFIG", "./cgsnap.conf", "~/.cgsnap/cgsnap.conf",
             "~/cgsnap.conf", "/etc/cgsnap/cgsnap.conf", "/etc/cgsnap.conf"]
    positions = [text.find(p) for p in paths]
    assert -1 not in positions and positions == sorted(positions), positions
    assert "owned by root" in text
    assert plain.run("create", "--help")[0] == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "local_disks" in text and "--allow-shared-volumes" in text


# -- defect 15: root by boot order; encrypted local disks --------------------------

def test_root_is_the_disk_libvirt_boots_not_the_first_name(tmp_path):
    # libvirt groups disks by bus in the order the buses first appear; with
    # <os><boot dev='hd'/> it boots the first disk of that list (here vda).
    xml = _domain("g", testlab.new_instance_id(),
                  [_disk("vda", "/x/a"), _disk("sda", "/x/s", bus="scsi")],
                  os_boot="<boot dev='hd'/>")
    uri = testlab.write_node(str(tmp_path / "n.xml"), [xml])
    dom = libvirt_driver.connection(uri).lookupByName("g")
    disks = libvirt_driver.parse_disks(dom.XMLDesc(0))
    assert [d["device"] for d in disks if d["root"]] == ["vda"]
    # scsi first in the XML: libvirt boots sda
    xml = _domain("h", testlab.new_instance_id(),
                  [_disk("sda", "/x/s", bus="scsi"), _disk("vda", "/x/a")])
    uri = testlab.write_node(str(tmp_path / "m.xml"), [xml])
    dom = libvirt_driver.connection(uri).lookupByName("h")
    assert [d["device"] for d in libvirt_driver.parse_disks(dom.XMLDesc(0))
            if d["root"]] == ["sda"]
    # a per-disk boot order wins
    xml = _domain("i", testlab.new_instance_id(),
                  [_disk("vda", "/x/a", boot=2), _disk("sda", "/x/s", bus="scsi", boot=1)])
    assert [d["device"] for d in libvirt_driver.parse_disks(xml) if d["root"]] == ["sda"]


def test_encrypted_disk_in_xml_is_refused_before_the_freeze(tmp_path, monkeypatch, qemu_like):
    path = tmp_path / "enc.qcow2"
    path.write_bytes(b"\0" * 4096)
    enc = ("<encryption format='luks'><secret type='passphrase' "
           "uuid='11111111-2222-3333-4444-555555555556'/></encryption>")
    host = PlainHost(tmp_path, monkeypatch, disks=[_disk("vda", path, extra=enc)])
    host.write_conf(local_disks="qcow2")
    rc, _, err = host.run("create", host.name)
    _one_line(err)
    assert rc == exception.EXIT_REFUSED and "encrypted" in err and "vda" in err
    assert qemu_like == []


def test_luks_qcow2_is_refused_before_the_freeze(tmp_path, monkeypatch, qemu_like):
    path = tmp_path / "luks.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "--object",
                    "secret,id=s0,data=pw", "-o", "encrypt.format=luks,encrypt.key-secret=s0",
                    str(path), "1M"], check=True)
    plain_disk = tmp_path / "plain.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(plain_disk), "1M"],
                   check=True)
    host = PlainHost(tmp_path, monkeypatch,
                     disks=[_disk("vda", plain_disk), _disk("vdb", path)])
    host.write_conf(local_disks="qcow2")
    rc, _, err = host.run("create", "--all-volumes", host.name)
    _one_line(err)
    assert rc == exception.EXIT_REFUSED and "encrypted" in err and "vdb" in err
    assert qemu_like == []


# -- defect 11: LUN disks are listed --------------------------------------------------

def test_lun_disks_are_listed_in_skipped_disks(tmp_path, monkeypatch, qemu_like):
    path = tmp_path / "vda.qcow2"
    path.write_bytes(b"\0" * 4096)
    lun = ("<disk type='block' device='lun'><source dev='/dev/sdz'/>"
           "<target dev='sdb' bus='scsi'/></disk>\n")
    host = PlainHost(tmp_path, monkeypatch, disks=[_disk("vda", path), lun])
    host.write_conf(local_disks="qcow2")
    host.run("create", "--all-volumes", host.name)  # the test driver stops at the snapshot
    [doc] = host.sets()
    rc, out, _ = host.run("show", doc["id"], "-f", "json")
    skipped = json.loads(out)["skipped_disks"]
    assert [d["device"] for d in skipped] == ["sdb"]
    assert "lun" in skipped[0]["reason"]


# -- defect 11: a volume shared with another instance ------------------------------

def _share_one_volume(guest):
    vid = guest.volume_ids[0]
    guest.backend.volumes[vid]["attached_to"].append(testlab.new_instance_id())
    return vid


def test_shared_volume_is_refused_without_the_option(guest):
    from cgsnap import api
    vid = _share_one_volume(guest)
    with pytest.raises(exception.Refused) as e:
        api.create_snapshot_set(guest.name, all_volumes=True)
    assert vid in str(e.value) and "--allow-shared-volumes" in str(e.value)
    assert guest.backend.snapshots == {}
    assert guest.frozen_count() == 0


def test_shared_volume_allowed_is_recorded_crash_consistent(guest):
    from cgsnap import api, manifest
    vid = _share_one_volume(guest)
    doc = api.create_snapshot_set(guest.name, all_volumes=True, allow_shared_volumes=True)
    assert doc["status"] == "available" and doc["consistency"] == "filesystem"
    by_volume = {m["volume_id"]: m for m in doc["members"]}
    assert by_volume[vid]["consistency"] == "crash"
    assert all("consistency" not in m for v, m in by_volume.items() if v != vid)
    manifest.verify(doc)
    assert vid in (doc.get("status_reason") or "")


def test_shared_volume_option_on_the_cli(guest, capsys):
    _share_one_volume(guest)
    conf_text = f"[DEFAULT]\nstate_dir = {guest.uri[7:]}.state\n[libvirt]\nuri = {guest.uri}\n"
    conf = os.path.join(os.path.dirname(guest.uri[7:]), "cli.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["--config-file", conf, "create", "--all-volumes", guest.name], out, err)
    assert rc == exception.EXIT_REFUSED and "--allow-shared-volumes" in err.getvalue()
    rc = cli.run(["--config-file", conf, "create", "--all-volumes", "--allow-shared-volumes",
                  guest.name, "-f", "json"], out, err)
    assert rc == 0, err.getvalue()


# -- issue 11 finding 5: a cloud whose catalog has no image service ----------------

def test_gc_on_a_cloud_without_an_image_service_skips_glance_once(guest, monkeypatch):
    from keystoneauth1 import exceptions as ks_exc

    from cgsnap import drivers, gc
    from cgsnap.drivers import cinder

    class Session:  # Keystone's answer: Cinder is in the catalog, Glance is not
        def get_endpoint(self, service_type, **kwargs):
            if service_type == "image":
                raise ks_exc.EndpointNotFound()
            return "http://cinder.invalid/v3"

    class Region:
        interface, region_name = "public", None

    monkeypatch.setattr(cinder, "_session_from_config", lambda conf: (Session(), Region()))
    configured = drivers._ConfiguredDriverSet()
    assert configured.unavailable("volumes") is None
    assert "no image service" in configured.unavailable("images")

    class NoGlance:
        def close(self):
            pass

        def __getattr__(self, name):
            raise AssertionError(f"Glance used: {name}")

    class CloudWithoutGlance(drivers.DriverSet):
        def unavailable(self, name):
            return configured.unavailable(name)

    drivers.override(CloudWithoutGlance(guest.hypervisor, guest.backend, NoGlance()))
    notes = []
    lists_before = guest.backend.calls["list"]
    assert gc.collect(dry_run=True, grace_s=0, notes=notes) == []
    assert notes == ["gc skipped Glance: the cloud's service catalog has no image service"]
    assert guest.backend.calls["list"] > lists_before  # Cinder is still collected


def test_guest_side_encryption_on_a_raw_disk_is_not_refused(tmp_path):
    """A raw disk whose guest runs LUKS inside it holds only ciphertext: its
    overlay leaks nothing, so only QEMU-level encryption is refused."""
    from cgsnap.tasks.hypervisor import image_encryption
    raw = tmp_path / "guest-luks.raw"
    raw.write_bytes(b"LUKS\xba\xbe" + b"\0" * 4096)
    assert image_encryption(str(raw), "raw") is None
    assert image_encryption(str(raw), "luks") == "LUKS"
    qcow = tmp_path / "plain.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "1M"], check=True)
    assert image_encryption(str(qcow), "qcow2") is None


def test_memory_precheck_dir_removed_when_a_later_precheck_fails(guest, qemu_like):
    """CheckMemory makes the set's directory for the memory image; a later
    pre-check failing must not leave it behind (volume-backed guest: no
    local disk, so CheckMemory alone made it)."""
    from cgsnap import api, faults
    from cgsnap.tasks import local
    faults.arm("task.CheckImageStore")
    with pytest.raises(exception.CgsnapError):
        api.create_snapshot_set(guest.name, all_volumes=True, memory=True)
    root = os.path.dirname(local.set_dir("x"))
    assert not os.path.exists(root) or os.listdir(root) == []
    assert guest.backend.snapshots == {}


def test_a_guest_booting_from_a_lun_has_no_root_disk():
    lun = ("<disk type='block' device='lun'><source dev='/dev/sdz'/>"
           "<target dev='sda' bus='scsi'/></disk>\n")
    xml = _domain("j", testlab.new_instance_id(), [lun, _disk("sdb", "/x/b", bus="scsi")])
    assert [d["root"] for d in libvirt_driver.parse_disks(xml)] == [False]
    assert [d["device"] for d in libvirt_driver.parse_disks(xml, device="lun")] == ["sda"]
