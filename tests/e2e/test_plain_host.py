"""A plain libvirt host tried as a new user would (issue 10, defect 17), on a
real QEMU guest: four file-backed disks, none with a serial, and no OpenStack
configured at all (no clouds.yaml, no OS_* variables).

Uses its own guest, ``$CGSNAP_E2E_PLAIN_GUEST`` (default ``plainhost-e2e``),
and never stops the shared libvirtd: it only needs one to be running
(``testguest.sh libvirtd-start`` is idempotent).
"""

import json
import os

import pytest

from cgsnap.drivers.libvirt_driver import parse_disks

from .conftest import RealGuest, run_testguest

GUEST = os.environ.get("CGSNAP_E2E_PLAIN_GUEST", "plainhost-e2e")
OS_VARS = ("OS_CLOUD", "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME",
           "OS_CLIENT_CONFIG_FILE", "OS_TOKEN", "OS_AUTH_TYPE")


@pytest.fixture(scope="module")
def plain_guest_name():
    run_testguest("build")
    run_testguest("libvirtd-start")
    # no --serial: every disk is a file without a serial, as on a plain host
    run_testguest("boot", GUEST, "--fresh", "--interval", "0.05", timeout=300)
    yield GUEST
    run_testguest("destroy", GUEST)


@pytest.fixture
def plain(plain_guest_name, tmp_path, monkeypatch):
    for var in OS_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    g = RealGuest(plain_guest_name, tmp_path)
    disks = parse_disks(g.dom.XMLDesc(0))
    assert len(disks) == 4
    assert all(d["serial"] is None and d["source_type"] == "file" for d in disks)
    g.write_conf(local_disks="skip")  # the default
    g.wait_progress()
    yield g
    assert g.freeze_status() == "thawed"
    assert g.disk_sources() == g.original


def _left_in(path):
    return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files] + \
        [d for d, subdirs, files in os.walk(path) if not subdirs and not files and d != str(path)]


def _rc(g, *argv):
    rc, out, err = g.cgsnap(*argv)
    assert "Traceback" not in err
    return rc, out, err


def test_default_config_is_refused_with_advice_and_leaves_nothing(plain):
    rc, _, err = _rc(plain, "create", plain.name)
    assert rc == 4, err
    assert err.count("\n") == 1 and "local_disks = qcow2" in err and "auth_url" not in err
    assert _left_in(plain.tmp / "local") == []
    rc, out, err = _rc(plain, "list", "-f", "json")
    [failed] = json.loads(out)
    assert failed["status"] == "failed"
    rc, _, err = _rc(plain, "delete", failed["id"])
    assert rc == 0, err
    rc, out, err = _rc(plain, "gc", "--dry-run", "--grace-period", "0", "-f", "json")
    assert rc == 0, err
    assert err.count("no OpenStack credentials") == 1 and json.loads(out) == []


def test_all_volumes_exclude_root_with_defaults_captures_nothing_so_is_refused(plain):
    before = plain.last_seq()
    rc, _, err = _rc(plain, "create", "--all-volumes", "--exclude-root", plain.name)
    assert rc == 4, err
    assert "vdb, vdc, vdd" in err and "local_disks = qcow2" in err
    rc, out, _ = _rc(plain, "list", "-f", "json", "--status", "available")
    assert json.loads(out) == []
    plain.wait_progress()
    assert plain.last_seq() > before


def test_local_disks_qcow2_takes_all_four_disks_without_openstack(plain):
    plain.write_conf(local_disks="qcow2")
    rc, out, err = _rc(plain, "create", "--all-volumes", plain.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "available" and doc["consistency"] == "filesystem"
    assert sorted(m["device"] for m in doc["members"]) == ["vda", "vdb", "vdc", "vdd"]
    assert {m["kind"] for m in doc["members"]} == {"local-qcow2"}
    assert doc["skipped_disks"] == []
    rc, _, err = _rc(plain, "delete", doc["id"])
    assert rc == 0, err
    assert _left_in(plain.tmp / "local") == []
