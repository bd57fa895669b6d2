"""A Nova-like layout on the real guest: the data disks carry the serials of
real dev-cloud Cinder volumes attached to the instance.

* Proof 5: every Cinder snapshot is `available` before the guest is thawed.
* The image-backed root goes to real Glance after the thaw, with the set's
  metadata, and the domain's disk chain ends as it began."""

import datetime
import json
import os
import uuid

import pytest

from .. import lab as testlab
from .conftest import RealGuest, inspect_image, run_testguest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLOUDS = os.path.join(ROOT, ".devcloud", "clouds.yaml")


def _ts(text):
    return datetime.datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=datetime.timezone.utc)


@pytest.fixture(scope="module")
def cinder_guest(libvirtd, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cinder-guest")
    if not os.path.exists(CLOUDS):
        pytest.fail("dev cloud not set up: run `make e2e` (it starts it)", pytrace=False)
    lab = testlab.CinderLab(CLOUDS)
    vols = [lab.user.volumes.create(1, name=f"e2e-cinder-{i}") for i in range(3)]
    for v in vols:
        lab._wait_volume(v.id, "available")
    name = f"cgsnap-e2e-cinder-{uuid.uuid4().hex[:6]}"
    run_testguest("boot", name, "--fresh", "--interval", "0.02",
              *[a for dev, v in zip(("vdb", "vdc", "vdd"), vols)
                for a in ("--serial", f"{dev}={v.id}")], timeout=180)
    guest = RealGuest(name, tmp_path)
    for v in vols:
        lab.attach(v.id, guest.id)
    guest.write_conf(local_disks="qcow2", clouds_yaml=CLOUDS)
    yield guest, lab, [v.id for v in vols]
    try:
        assert guest.freeze_status() == "thawed"
    finally:
        run_testguest("destroy", name)
        lab.delete_volumes([v.id for v in vols])


def test_cinder_snapshots_are_available_before_the_thaw(cinder_guest):
    guest, lab, volume_ids = cinder_guest
    guest.write_conf(local_disks="qcow2", clouds_yaml=CLOUDS)  # the root stays local here
    rc, out, err = guest.cgsnap("create", "--all-volumes", guest.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    kinds = {m["device"]: m["kind"] for m in doc["members"]}
    assert kinds == {"vda": "local-qcow2", "vdb": "cinder-snapshot",
                     "vdc": "cinder-snapshot", "vdd": "cinder-snapshot"}
    assert doc["consistency"] == "filesystem" and doc["freeze"]["filesystems_frozen"] == 4
    thaw_issued = _ts(doc["freeze"]["thaw_started_at"])
    froze = _ts(doc["freeze"]["started_at"])
    snaps = {s.id: s for s in lab.user.volume_snapshots.list()
             if (s.metadata or {}).get("cgsnap_set_id") == doc["id"]}
    assert {s.volume_id for s in snaps.values()} == set(volume_ids)
    for s in snaps.values():
        # Cinder's own record: created after the freeze, and its last status
        # change (creating -> available) happened before the thaw was issued.
        assert s.status == "available"
        assert froze <= _ts(s.created_at) <= _ts(s.updated_at) <= thaw_issued, (
            s.id, s.created_at, s.updated_at, doc["freeze"])
    assert guest.cgsnap("delete", doc["id"])[0] == 0
    assert not [s for s in lab.user.volume_snapshots.list()
                if (s.metadata or {}).get("cgsnap_set_id") == doc["id"]]


def test_image_backed_root_is_uploaded_to_glance_after_the_thaw(cinder_guest, tmp_path):
    guest, lab, volume_ids = cinder_guest
    guest.write_conf(local_disks="skip", clouds_yaml=CLOUDS)  # the root goes to Glance
    before = guest.disk_sources()
    rc, out, err = guest.cgsnap("create", "--all-volumes", guest.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    root = [m for m in doc["members"] if m["role"] == "root"][0]
    assert root["kind"] == "glance-image" and root["status"] == "available"
    assert guest.disk_sources() == before  # committed back and pivoted
    from cgsnap.conf import CONF
    from cgsnap.drivers import glance
    from cgsnap.drivers.cinder import _session_from_config
    gl = glance.GlanceBackend(_session_from_config(CONF)[0])
    images = gl.list_images(doc["id"])
    assert [i["id"] for i in images] == [root["image_id"]]
    img = gl.client.images.get(root["image_id"])
    assert img["status"] == "active" and img["name"] == root["name"]
    assert img["cgsnap_set_id"] == doc["id"] and img["cgsnap_role"] == "root"
    assert img["cgsnap_instance_id"] == guest.id
    # The uploaded root is a clean ext4 taken inside the freeze: its marker file is there.
    path = tmp_path / "root.qcow2"
    with open(path, "wb") as f:
        for chunk in gl.client.images.data(root["image_id"]):
            f.write(chunk)
    _, needs_recovery, fsck_rc = inspect_image(str(path), tmp_path)
    assert not needs_recovery and fsck_rc == 0
    assert guest.cgsnap("delete", doc["id"])[0] == 0
    assert gl.list_images(doc["id"]) == []
