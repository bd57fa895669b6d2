"""Safety nets: the thaw guard and crash recovery (test driver + memory backend;
the e2e tier repeats both with a real guest and a SIGKILLed process)."""

import json
import os

import pytest

from cgsnap import api, catalog, exception, faults, manifest, naming, plan, state
from cgsnap.conf import CONF


def test_guard_thaws_a_freeze_that_outlives_its_deadline(guest):
    CONF.set_override("thaw_guard_margin", 0.2, group="libvirt")
    # Hang inside the window well past freeze_timeout (0.5 s): the guard thaws
    # at 0.7 s, and the set fails because its freeze lapsed.
    faults.arm("task.SnapshotVolumes", "hang=1.5")
    try:
        with pytest.raises(exception.CgsnapError):
            api.create_snapshot_set(guest.name, timeout=0.5)
    finally:
        CONF.clear_override("thaw_guard_margin", group="libvirt")
    doc = api.list_snapshot_sets(guest.id)[0]
    assert doc["status"] == "failed"
    record = os.path.join(state.state_dir(), "guards", f"{doc['id']}.json")
    fired = json.load(open(record))
    assert fired["reason"] == "deadline" and fired["thawed"] == 2
    assert guest.frozen_count() == 0
    assert guest.backend.list_snapshots(doc["id"]) == []


def test_guard_is_disarmed_on_the_normal_path(guest):
    doc = api.create_snapshot_set(guest.name)
    assert doc["freeze"]["guard"] == "disarmed"
    assert not os.path.exists(os.path.join(state.state_dir(), "guards", f"{doc['id']}.json"))


def _crashed_set(guest):
    """What a create killed inside the window leaves: a 'creating' manifest,
    member snapshots, a frozen guest, no lock."""
    set_id = naming.new_set_id()
    inst = guest.hypervisor.get_instance(guest.id)
    members, _ = plan.members(inst, set_id, {"all_volumes": True})
    cat = catalog.Catalog(state.catalog_url())
    cat.create(manifest.new(set_id, "crashed", inst, members, {}))
    for m in members:
        guest.backend.create_snapshot(m["volume_id"], m["name"], naming.member_metadata(
            set_id, guest.id, m["role"], m["device"], 1))
    guest.domain.fsFreeze()
    return set_id


def test_recover_reverts_an_interrupted_create(guest):
    set_id = _crashed_set(guest)
    rows = api.recover()
    assert [(r["id"], r["action"], r["result"]) for r in rows] == [(set_id, "reverted", "ok")]
    doc = api.show_snapshot_set(set_id)
    assert doc["status"] == "failed" and "recover" in doc["status_reason"]
    assert guest.backend.list_snapshots(set_id) == []
    assert guest.frozen_count() == 0
    assert api.recover() == []  # idempotent: nothing left to do


def test_create_recovers_its_own_instance_first(guest):
    set_id = _crashed_set(guest)
    doc = api.create_snapshot_set(guest.name)
    assert doc["status"] == "available"
    assert api.show_snapshot_set(set_id)["status"] == "failed"
    assert guest.backend.list_snapshots(set_id) == []


def test_recover_skips_a_set_whose_process_is_alive(guest):
    from cgsnap import lock
    _crashed_set(guest)
    with lock.instance_lock(guest.id, "a live create"):
        rows = api.recover()
    assert rows[0]["action"] == "skipped"
    assert guest.frozen_count() == 2  # left alone while its owner lives


def test_gc_collects_only_orphans_in_dependency_safe_order(guest):
    from cgsnap import gc
    kept = api.create_snapshot_set(guest.name)
    orphan_set = naming.new_set_id()
    meta = naming.member_metadata(  # an orphan of this catalog (its own catalog id)
        orphan_set, guest.id, "volume", "vdb", 1,
        catalog_id=catalog.Catalog(state.catalog_url()).catalog_id)
    orphan = guest.backend.create_snapshot(guest.volume_ids[0], "cgsnap-orphan", meta)
    busy = guest.backend.create_snapshot(guest.volume_ids[1], "cgsnap-busy", meta)
    guest.backend.add_volume(name="clone")  # a volume created from `busy`
    list(guest.backend.volumes.values())[-1]["snapshot_id"] = busy["id"]
    guest.backend.create_snapshot(guest.volume_ids[2], "not-ours", {"owner": "someone"})
    guest.backend.list_snapshots(orphan_set)  # let them become available

    rows = gc.collect(dry_run=True, grace_s=3600)
    assert {r["action"] for r in rows} == {"kept"}  # too young
    rows = {r["id"]: r for r in gc.collect(dry_run=True, grace_s=0)}
    assert rows[orphan["id"]]["action"] == "would-delete"
    assert rows[busy["id"]]["action"] == "busy"
    assert len(rows) == 2  # the live set's members and foreign snapshots are never candidates
    rows = {r["id"]: r for r in gc.collect(grace_s=0)}
    assert rows[orphan["id"]]["action"] == "deleted"
    assert [s["id"] for s in guest.backend.list_snapshots(orphan_set)] == [busy["id"]]
    assert len(guest.backend.list_snapshots(kept["id"])) == 4
