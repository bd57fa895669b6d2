"""The README's bad-input table, row by row, against the real dev cloud.
Each case: one clear stderr line, the documented exit code, nothing left
behind (guest thawed, no snapshot of the set in Cinder)."""

import json
import os
import subprocess

import pytest
import yaml

from cgsnap import drivers, exception, faults

from .conftest import CLOUD, CLOUDS


def _one_line(err):
    assert err.count("\n") == 1 and err.startswith("cgsnap: error: "), err
    assert "Traceback" not in err


def _nothing_left(inst):
    assert inst.frozen_count() == 0
    rc, out, _ = inst.cgsnap("list", "-f", "json")
    for s in json.loads(out):
        assert s["status"] in ("failed", "available")
        if s["status"] == "failed":
            assert inst.cinder_snapshots(s["id"]) == []


@pytest.mark.parametrize("ref", ["no-such-instance", "12345678-0000-0000-0000-00000000000",
                                 "'; DROP TABLE x; --"])
def test_unknown_instance_or_malformed_id(make_instance, ref):
    inst = make_instance(n_data=0, name="known")
    rc, _, err = inst.cgsnap("create", "--all-volumes", ref)
    assert rc == exception.EXIT_NOT_FOUND
    _one_line(err)
    _nothing_left(inst)


@pytest.mark.parametrize("name", ["快照 ✓ ünïcødé", "ctl\x07\x1b[31m\tchars", "$(reboot); `id` | &",
                                  "n" * 1000])
def test_odd_names(make_instance, name):
    inst = make_instance(n_data=1, name="names")
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "--name", name,
                               "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["name"]) <= 128 and "\x1b" not in doc["name"] and "\x07" not in doc["name"]
    for s in inst.cinder_snapshots(doc["id"]):
        assert s.name.startswith("cgsnap-") and s.metadata["cgsnap_set_name"] == doc["name"]
    assert inst.cgsnap("delete", doc["id"])[0] == 0


def test_exclude_volume_not_attached(make_instance):
    inst = make_instance(n_data=1, name="excl")
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name, "--exclude-volume",
                             "0b6b2f3e-1111-2222-3333-444455556666")
    assert rc == exception.EXIT_REFUSED and "no such volume is attached" in err
    _one_line(err)
    _nothing_left(inst)


@pytest.mark.parametrize("status", ["attaching", "maintenance"])
def test_volume_states(make_instance, lab, status):
    inst = make_instance(n_data=2, name="states")
    lab.reset_status(inst.volume_ids[1], status)
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    assert rc == exception.EXIT_REFUSED and f"'{status}'" in err
    _one_line(err)
    _nothing_left(inst)


def test_zero_data_volumes(make_instance):
    inst = make_instance(n_data=0, name="zero")
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    assert [m["role"] for m in json.loads(out)["members"]] == ["root"]


def test_26_data_volumes(make_instance):
    inst = make_instance(n_data=26, name="many")
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["members"]) == 27 and doc["members"][-1]["device"] == "vdaa"
    assert len(inst.cinder_snapshots(doc["id"])) == 27
    assert inst.cgsnap("delete", doc["id"])[0] == 0


def test_quota_already_exhausted(make_instance, lab):
    inst = make_instance(n_data=2, name="noquota")
    used = {a.name: a.value for a in lab.user.limits.get().absolute}["totalSnapshotsUsed"]
    lab.set_quota(snapshots=used)
    try:
        rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    finally:
        lab.set_quota(snapshots=1000)
    assert rc == exception.EXIT_REFUSED and "snapshots quota too low" in err
    _one_line(err)
    _nothing_left(inst)


def test_wrong_keystone_password(make_instance, tmp_path):
    inst = make_instance(n_data=1, name="badpw")
    clouds = yaml.safe_load(open(CLOUDS))
    clouds["clouds"][CLOUD]["auth"]["password"] = "wrong"
    bad = tmp_path / "clouds-bad.yaml"
    bad.write_text(yaml.safe_dump(clouds))
    inst.conf.write_text(inst.conf.read_text().replace(CLOUDS, str(bad)))
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    assert rc == exception.EXIT_CONFIG and "authentication failed" in err.lower()
    _one_line(err)
    _nothing_left(inst)


def test_token_expiring_mid_flow_is_renewed(make_instance):
    """keystoneauth re-authenticates when the token expires inside the flow."""
    from cgsnap import drivers
    inst = make_instance(n_data=2, name="token")
    seen = {}

    def expire_token(_point):
        auth = drivers.get().volumes.client.client.session.auth
        seen["before"] = auth.auth_ref.auth_token
        auth.auth_ref._data["token"]["expires_at"] = "2000-01-01T00:00:00.000000Z"
        seen["auth"] = auth

    faults.arm("task.CheckQuota", expire_token)
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    assert seen["auth"].auth_ref.auth_token != seen["before"]  # a new token was issued
    assert len(inst.cinder_snapshots(json.loads(out)["id"])) == 3


def test_missing_or_unreadable_config(make_instance, tmp_path):
    inst = make_instance(n_data=0, name="conf")
    rc, _, err = inst.cgsnap("--config-file", str(tmp_path / "nope.conf"), "list")
    assert rc == exception.EXIT_CONFIG and "not found" in err
    _one_line(err)
    rc, _, err = inst.cgsnap("--config-file", str(tmp_path), "list")  # a directory
    assert rc == exception.EXIT_CONFIG
    _one_line(err)


def test_state_dir_on_a_full_disk(make_instance, tmp_path):
    inst = make_instance(n_data=2, name="fulldisk")
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        pytest.fail("cannot mount a tmpfs (the tests run as root on CI)", pytrace=False)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/fill", "bs=64k"], capture_output=True)
        inst.conf.write_text(inst.conf.read_text().replace(
            f"state_dir = {inst.conf.parent}/state", f"state_dir = {mnt}/state"))
        rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
        assert rc == exception.EXIT_CONFIG, err
        _one_line(err)
        assert inst.frozen_count() == 0
        mine = [s for s in inst.lab.admin.volume_snapshots.list(search_opts={"all_tenants": 1})
                if (s.metadata or {}).get("cgsnap_instance_id") == inst.id]
        assert mine == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
    assert not os.path.ismount(mnt)


def test_every_disk_left_out_is_refused_before_the_freeze(make_instance):
    """Issue 10, defect 17: a set that would capture nothing (root excluded,
    every volume excluded) is refused (exit 4) naming what was left out,
    not an `available` set of 0 members; Cinder is not touched."""
    inst = make_instance(n_data=2, name="nothing")
    excl = [a for v in inst.volume_ids for a in ("--exclude-volume", v)]
    rc, _, err = inst.cgsnap("create", "--all-volumes", "--exclude-root", *excl, inst.name)
    _one_line(err)
    assert rc == exception.EXIT_REFUSED
    assert "capture nothing" in err and all(v in err for v in inst.volume_ids)
    _nothing_left(inst)
    rc, out, _ = inst.cgsnap("list", "-f", "json", "--status", "available")
    assert json.loads(out) == []
    [failed] = json.loads(inst.cgsnap("list", "-f", "json")[1])
    rc, _, err = inst.cgsnap("delete", failed["id"])
    assert rc == 0, err


def test_refused_set_deletes_on_a_host_without_credentials(make_instance, lab):
    """Issue 10, defect 17: a set refused by a pre-check never created a
    snapshot, so deleting it never needs Cinder: on a host whose OpenStack
    configuration is gone the delete succeeds instead of exiting 8 and
    leaving the set error_deleting."""
    inst = make_instance(n_data=1, name="nocreds")
    lab.reset_status(inst.volume_ids[0], "maintenance")
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    assert rc == exception.EXIT_REFUSED, err
    [failed] = json.loads(inst.cgsnap("list", "-f", "json")[1])
    failed = json.loads(inst.cgsnap("show", failed["id"], "-f", "json")[1])
    assert {m["kind"] for m in failed["members"]} == {"cinder-snapshot"}
    # the same host with no OpenStack configured at all, in a new process
    inst.conf.write_text(inst.conf.read_text().split("[openstack]")[0])
    drivers.override(None)
    old = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OS_")}
    try:
        rc, _, err = inst.cgsnap("delete", failed["id"])
    finally:
        os.environ.update(old)
    assert rc == 0, err
    assert json.loads(inst.cgsnap("list", "-f", "json")[1]) == []
