"""The group-snapshot cut (issue 5): when it is chosen, what it records, and
that every failure still leaves nothing behind.  On the in-memory backend;
tests/functional/test_group_snapshot.py runs the same on real Cinder."""

import pytest

from cgsnap import api, exception, faults, gc, naming
from cgsnap.conf import CONF


@pytest.fixture
def grouped(make_guest):
    """A guest whose 4 volumes (root + 3 data) form one consistent group."""
    g = make_guest(n_volumes=3)
    g.group_id = g.backend.add_group([g.root_volume_id, *g.volume_ids])
    return g


def _assert_nothing_left(g, set_id):
    assert g.backend.list_snapshots(set_id) == []
    assert g.backend.list_group_snapshots(set_id) == []
    assert [s for s in g.backend.snapshots.values() if s["status"] != "deleting"] == []
    assert g.frozen_count() == 0


def test_one_consistent_group_is_cut_by_one_group_snapshot(grouped):
    g = grouped
    doc = api.create_snapshot_set(g.name)
    assert doc["status"] == "available"
    assert doc["consistency"] == "filesystem"       # the freeze still happened
    assert doc["backend_consistency"] == "group"
    gs = doc["group_snapshot"]
    assert gs["group_id"] == g.group_id
    assert gs["name"] == naming.group_snapshot_name(g.id, doc["id"])
    assert g.backend.calls["create"] == 1            # one call cut all 4 volumes
    # Every member is a snapshot of that group snapshot, renamed and tagged.
    snaps = {s["id"]: s for s in g.backend.list_snapshots(doc["id"])}
    assert len(snaps) == 4
    for m in doc["members"]:
        s = snaps[m["snapshot_id"]]
        assert s["group_snapshot_id"] == gs["id"]
        assert s["name"] == m["name"] and s["volume_id"] == m["volume_id"]
        assert s["metadata"]["cgsnap_device"] == m["device"]
    api.delete_snapshot_set(doc["id"])
    _assert_nothing_left(g, doc["id"])


def test_per_volume_sets_record_no_backend_consistency(guest):
    doc = api.create_snapshot_set(guest.name)
    assert doc["backend_consistency"] == "none" and doc["group_snapshot"] is None
    assert guest.backend.calls["create"] == 4


@pytest.mark.parametrize("case", ["not-consistent", "specs-hidden", "extra-volume",
                                  "excluded-member", "split", "group-not-available",
                                  "never"])
def test_group_is_not_used_unless_it_is_exactly_the_members_and_consistent(make_guest, case):
    g = make_guest(n_volumes=3)
    vols = [g.root_volume_id, *g.volume_ids]
    kwargs = {}
    if case == "not-consistent":
        g.backend.add_group(vols, consistent=False)
    elif case == "specs-hidden":
        g.backend.add_group(vols, consistent=None)
    elif case == "extra-volume":
        g.backend.add_group(vols + [g.backend.add_volume(attached_to=["someone-else"])])
    elif case == "excluded-member":
        g.backend.add_group(vols)
        kwargs["exclude_volumes"] = [g.volume_ids[0]]
    elif case == "split":
        g.backend.add_group(vols[:2])
        g.backend.add_group(vols[2:])
    elif case == "group-not-available":
        g.backend.add_group(vols, status="updating")
    elif case == "never":
        g.backend.add_group(vols)
        CONF.set_override("group_snapshots", "never", group="snapshot")
    doc = api.create_snapshot_set(g.name, **kwargs)
    assert doc["status"] == "available"
    assert doc["backend_consistency"] == "none"
    assert g.backend.group_snapshots == {}


def test_hidden_specs_are_trusted_for_listed_group_types(make_guest):
    g = make_guest(n_volumes=2)
    g.backend.add_group([g.root_volume_id, *g.volume_ids], consistent=None, type_name="gold")
    CONF.set_override("consistent_group_types", ["gold"], group="snapshot")
    assert api.create_snapshot_set(g.name)["backend_consistency"] == "group"


@pytest.mark.parametrize("point", [
    "volume.create_group_snapshot", "volume.create_group_snapshot.after",
    "task.SnapshotVolumes.created", "volume.get_group_snapshot", "hypervisor.thaw",
    "task.TagGroupSnapshotMembers", "volume.tag_snapshot", "task.FinalizeSet"])
def test_failure_anywhere_deletes_the_group_snapshot_and_thaws(grouped, point):
    faults.arm(point, "raise@1")
    with pytest.raises(exception.InjectedFault):
        api.create_snapshot_set(grouped.name)
    [doc] = api.list_snapshot_sets(grouped.id)
    assert doc["status"] == "failed" and point in doc["status_reason"]
    _assert_nothing_left(grouped, doc["id"])


def test_group_snapshot_in_error_fails_the_set(grouped):
    grouped.backend.fail_volume_ids.add(grouped.volume_ids[1])
    with pytest.raises(exception.SnapshotFailed, match="went to 'error'"):
        api.create_snapshot_set(grouped.name)
    [doc] = api.list_snapshot_sets(grouped.id)
    _assert_nothing_left(grouped, doc["id"])


def test_gc_collects_an_orphan_group_snapshot_with_its_members(grouped):
    g = grouped
    doc = api.create_snapshot_set(g.name)
    api.create_snapshot_set(g.name)  # a live set: gc must leave it alone
    # The set's manifest is lost; its group snapshot is now an orphan.
    from cgsnap import catalog, state
    catalog.Catalog(state.catalog_url()).delete(doc["id"])
    rows = gc.collect(grace_s=0, images=False, any_instance=True)
    assert [(r["kind"], r["set_id"], r["action"]) for r in rows] == [
        ("cinder-group-snapshot", doc["id"], "deleted")]
    assert g.backend.list_group_snapshots(doc["id"]) == []
    assert len(g.backend.group_snapshots) == 1


def test_a_set_without_volume_members_never_touches_the_volume_service(guest):
    """Plain libvirt hosts have no Cinder: building its client would fail."""
    from cgsnap import drivers

    class NoVolumeService:
        def close(self):
            pass

        def __getattr__(self, name):
            raise AssertionError(f"volume service used: {name}")

    drivers.override(drivers.DriverSet(guest.hypervisor, NoVolumeService(), guest.images))
    # A set of no members at all is refused before the freeze (issue 10,
    # defect 17); neither that nor deleting the refused set asks Cinder.
    with pytest.raises(exception.Refused, match="capture nothing"):
        api.create_snapshot_set(guest.name, all_volumes=False, exclude_root=True)
    assert guest.frozen_count() == 0
    [failed] = api.list_snapshot_sets(status="failed")
    assert failed["members"] == [] and failed["backend_consistency"] is None
    api.delete_snapshot_set(failed["id"])
    assert api.list_snapshot_sets() == []


def test_tagging_resumed_after_a_crash_finds_and_finishes_every_member(grouped):
    """A create killed halfway through the tagging is completed by `recover`,
    which re-runs TagGroupSnapshotMembers: members already renamed must still
    be found, and one with metadata but the old name must be renamed."""
    from cgsnap.tasks import volume as vt
    g = grouped
    doc = api.create_snapshot_set(g.name)
    gs = doc["group_snapshot"]
    members = {m["volume_id"]: m for m in doc["members"]}
    # Undo part of the tagging, as a crash midway would have left it.
    snaps = sorted(g.backend.list_group_snapshot_members(gs, doc["id"]),
                   key=lambda s: s["volume_id"])
    g.backend.snapshots[snaps[0]["id"]].update(name=gs["name"], metadata={})
    g.backend.snapshots[snaps[1]["id"]]["name"] = gs["name"]  # metadata set, not renamed
    manifest = dict(doc, members=[dict(m, snapshot_id=None) for m in doc["members"]])
    out = vt.TagGroupSnapshotMembers().execute(
        doc["id"], manifest, {"mode": "group", "snapshots": [], "group_snapshot": gs})
    assert sorted(s["volume_id"] for s in out) == sorted(members)
    for s in g.backend.list_snapshots(doc["id"]):
        assert s["name"] == members[s["volume_id"]]["name"]
        assert s["metadata"]["cgsnap_device"] == members[s["volume_id"]]["device"]
    assert len(g.backend.list_snapshots(doc["id"])) == 4
