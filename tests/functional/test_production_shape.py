"""What the production-shaped dev cloud revealed (issue 11, findings 2 and 3).

These tests hold on both shapes; the production shape (`make
functional-production`: Cinder and Glance on MariaDB with the utf8mb3 tables of
their own db sync, per-volume-type quotas in force) is where today's code
failed them the way production does:

* finding 2: an emoji (a 4-byte UTF-8 character) in ``--name`` went verbatim
  into every member's metadata, and utf8mb3 refused it: HTTP 500 on every
  create, after the freeze;
* finding 3: only the project-wide snapshot quota was checked, so a set that
  does not fit the per-type quota (``snapshots_<type>``) froze the guest and
  failed on the first create past the limit.
"""

import json
import uuid

from cgsnap import exception, naming

from .conftest import CLOUD, CLOUDS

EMOJI_NAME = "nightly \U0001f600 backup \U0001f4be"
EMOJI_STORED = "nightly \\U0001f600 backup \\U0001f4be"


def _one_line(err):
    assert err.count("\n") == 1 and err.startswith("cgsnap: error: "), err
    assert "Traceback" not in err


def test_four_byte_name_is_stored_escaped(make_instance):
    inst = make_instance(n_data=2, name="prod-emoji")
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "--name", EMOJI_NAME,
                               "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["name"] == EMOJI_NAME  # the manifest keeps the full name
    snaps = inst.cinder_snapshots(doc["id"])
    assert len(snaps) == 3
    for s in snaps:
        assert s.metadata["cgsnap_set_name"] == EMOJI_STORED
    rc, out, err = inst.cgsnap("show", doc["id"], "-f", "json")
    assert rc == 0 and json.loads(out)["name"] == EMOJI_NAME, err
    assert inst.cgsnap("delete", doc["id"])[0] == 0
    assert inst.cinder_snapshots(doc["id"]) == []


def test_four_byte_name_in_glance_image_properties(tmp_path):
    """A root image carries the same metadata as image properties; Glance's
    tables are utf8mb3 on the production shape too."""
    import openstack.config

    from cgsnap.drivers import glance
    region = openstack.config.OpenStackConfig(config_files=[CLOUDS]).get_one(cloud=CLOUD)
    images = glance.GlanceBackend(region.get_session(), region_name=region.region_name)
    set_id, instance_id = str(uuid.uuid4()), str(uuid.uuid4())
    meta = naming.member_metadata(set_id, instance_id, naming.ROLE_ROOT, "vda", 1, EMOJI_NAME)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 4096)
    try:
        img = images.upload_image(naming.member_name(instance_id, set_id, naming.ROLE_ROOT, "vda"),
                                  str(disk), meta, disk_format="raw")
        assert img["status"] == "active"
        assert img["metadata"][naming.META_SET_NAME] == EMOJI_STORED
    finally:
        for i in images.list_images(set_id):
            images.delete_image(i["id"])
    assert images.list_images(set_id) == []


def _type_quota(lab, kind, vtype="fake"):
    detail = lab.admin.quotas.get(lab.project_id, usage=True)._info[f"{kind}_{vtype}"]
    return detail["limit"], detail["in_use"] + detail.get("reserved", 0)


def test_per_type_snapshot_quota_refused_before_the_freeze(make_instance, lab):
    inst = make_instance(n_data=7, name="prod-typequota")  # 8 volumes of type fake
    old, used = _type_quota(lab, "snapshots")
    lab.set_quota(snapshots_fake=used + 5)
    try:
        rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name)
    finally:
        lab.set_quota(snapshots_fake=old)
    assert rc == exception.EXIT_REFUSED, err  # 4: refused, nothing was frozen
    assert "volume type fake" in err and "snapshots" in err and "needs 8, 5 of" in err, err
    _one_line(err)
    assert inst.frozen_count() == 0
    rc, out, _ = inst.cgsnap("list", "-f", "json")
    for s in json.loads(out):
        assert inst.cinder_snapshots(s["id"]) == []


def test_per_type_gigabytes_quota_refused_before_the_freeze(make_instance, lab):
    inst = make_instance(n_data=3, name="prod-typegb")  # 4 volumes of 1 GB
    old, used = _type_quota(lab, "gigabytes")
    lab.set_quota(gigabytes_fake=used + 2)
    try:
        rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    finally:
        lab.set_quota(gigabytes_fake=old)
    assert rc == exception.EXIT_REFUSED, err
    assert "volume type fake" in err and "gigabytes" in err, err
    _one_line(err)
    assert inst.frozen_count() == 0


def test_per_type_quota_that_fits_is_accepted(make_instance, lab):
    inst = make_instance(n_data=3, name="prod-typefit")
    old, used = _type_quota(lab, "snapshots")
    lab.set_quota(snapshots_fake=used + 4)
    try:
        rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    finally:
        lab.set_quota(snapshots_fake=old)
    assert rc == 0, err
    doc = json.loads(out)
    assert len(inst.cinder_snapshots(doc["id"])) == 4
    assert inst.cgsnap("delete", doc["id"])[0] == 0
