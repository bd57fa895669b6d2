"""The group-snapshot cut on real Cinder 29 (issue 5): a set whose volumes form
one group of the dev cloud's consistent group type ``fake-consistent``
(``consistent_group_snapshot_enabled = <is> True``) is cut by one Cinder group
snapshot; anything else is cut volume by volume.  Every failure leaves neither
the group snapshot nor any of its members behind."""

import json

import pytest

from cgsnap import exception, faults, manifest, naming

from .conftest import ADMIN_CLOUD, CLOUD

CONSISTENT = "fake-consistent"
TRUST = "[snapshot]\nconsistent_group_types = fake-consistent\n"


def _create(inst):
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    return json.loads(out)


def _assert_group_set(inst, doc, n):
    assert doc["status"] == "available" and doc["consistency"] == "filesystem"
    assert doc["backend_consistency"] == "group"
    gs = doc["group_snapshot"]
    assert gs["group_id"] == inst.group_id
    assert gs["name"] == naming.group_snapshot_name(inst.id, doc["id"])
    [cinder_gs] = inst.cinder_group_snapshots()
    assert cinder_gs.id == gs["id"] and cinder_gs.status == "available"
    assert naming.parse_group_snapshot_description(cinder_gs.description) == {
        "cgsnap_set_id": doc["id"], "cgsnap_instance_id": inst.id}
    # Each member is one of the group snapshot's snapshots, renamed and tagged.
    snaps = {s.id: s for s in inst.cinder_snapshots(doc["id"])}
    assert len(snaps) == len(doc["members"]) == n
    for m in doc["members"]:
        s = snaps[m["snapshot_id"]]
        assert s.group_snapshot_id == gs["id"] and s.status == "available"
        assert s.volume_id == m["volume_id"] and s.name == m["name"]
        assert s.metadata["cgsnap_device"] == m["device"]
        assert s.metadata["cgsnap_schema_version"] == str(manifest.SCHEMA_VERSION)
    # Cinder cut it inside the freeze window.
    assert doc["freeze"]["started_at"][:19] <= cinder_gs.created_at[:19] \
        <= doc["freeze"]["thaw_started_at"][:19]


def test_tenant_set_on_a_trusted_consistent_group_uses_one_group_snapshot(make_instance):
    inst = make_instance(n_data=5, name="grp", group_type=CONSISTENT)
    inst.add_config(TRUST)
    doc = _create(inst)
    _assert_group_set(inst, doc, 6)
    rc, out, _ = inst.cgsnap("show", doc["id"])
    assert rc == 0
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
             if line.startswith("|")]
    shown = {c[0]: c[1] for c in cells if len(c) == 2}
    assert shown["backend_consistency"] == "group"
    assert shown["group_snapshot"] == doc["group_snapshot"]["id"]
    rc, _, err = inst.cgsnap("delete", doc["id"])
    assert rc == 0, err
    assert inst.cinder_group_snapshots() == []
    assert inst.cinder_snapshots(doc["id"]) == []


def test_tenant_cannot_see_group_specs_so_untrusted_types_go_per_volume(make_instance):
    """Cinder shows group specs to admins only: without consistent_group_types
    a tenant cannot prove the type is consistent, so cgsnap does not assume it."""
    inst = make_instance(n_data=2, name="grp-hidden", group_type=CONSISTENT)
    doc = _create(inst)
    assert doc["backend_consistency"] == "none" and doc["group_snapshot"] is None
    assert inst.cinder_group_snapshots() == []
    assert len(inst.cinder_snapshots(doc["id"])) == 3


def test_admin_reads_the_spec_itself(make_instance):
    inst = make_instance(n_data=2, name="grp-admin", group_type=CONSISTENT)
    inst.conf.write_text(inst.conf.read_text().replace(f"cloud = {CLOUD}\n",
                                                       f"cloud = {ADMIN_CLOUD}\n"))
    doc = _create(inst)
    _assert_group_set(inst, doc, 3)
    rc, _, err = inst.cgsnap("delete", doc["id"])
    assert rc == 0, err
    assert inst.cinder_group_snapshots() == []


def test_a_group_type_without_the_spec_goes_per_volume(make_instance):
    inst = make_instance(n_data=2, name="grp-generic", group_type="fake-group")
    inst.conf.write_text(inst.conf.read_text().replace(f"cloud = {CLOUD}\n",
                                                       f"cloud = {ADMIN_CLOUD}\n"))
    doc = _create(inst)
    assert doc["backend_consistency"] == "none"
    assert inst.cinder_group_snapshots() == []


@pytest.mark.parametrize("point", ["volume.create_group_snapshot.after",
                                   "task.SnapshotVolumes.created", "hypervisor.thaw",
                                   "volume.tag_snapshot", "task.FinalizeSet"])
def test_failure_after_the_group_snapshot_leaves_nothing(make_instance, point):
    inst = make_instance(n_data=2, name="grp-fail", group_type=CONSISTENT)
    inst.add_config(TRUST)
    faults.arm(point, "raise@1")
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    assert rc == exception.InjectedFault.exit_code, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert inst.frozen_count() == 0
    _, out, _ = inst.cgsnap("list", "-f", "json")
    [row] = json.loads(out)
    assert row["status"] == "failed"
    assert inst.cinder_group_snapshots() == []
    assert inst.cinder_snapshots(row["id"]) == []
    assert all(s.status != "creating" for s in inst.lab.admin.volume_snapshots.list(
        search_opts={"all_tenants": 1}) if s.volume_id in inst.all_volume_ids())


def test_members_are_found_whether_or_not_they_were_tagged(make_instance):
    """What a resumed TagGroupSnapshotMembers relies on, on real Cinder: the
    driver finds every member of a group snapshot, renamed or not."""
    from cgsnap.drivers import cinder
    inst = make_instance(n_data=2, name="grp-resume", group_type=CONSISTENT)
    inst.add_config(TRUST)
    doc = _create(inst)
    gs = doc["group_snapshot"]
    backend = cinder.CinderBackend(inst.lab.session)
    ids = sorted(m["snapshot_id"] for m in doc["members"])
    assert sorted(s["id"] for s in backend.list_group_snapshot_members(gs, doc["id"])) == ids
    # One member as a crash before its tagging leaves it: the group's name, no metadata.
    first = doc["members"][0]["snapshot_id"]
    inst.lab.user.volume_snapshots.update(first, name=gs["name"])
    inst.lab.user.volume_snapshots.delete_metadata(first, list(naming.member_metadata(
        doc["id"], inst.id, "volume", "vda", 1, doc["name"])))
    assert sorted(s["id"] for s in backend.list_group_snapshot_members(gs, doc["id"])) == ids
