"""Issue 11, finding 4: a snapshot stuck in 'creating' (cinder-api died
mid-request) cannot be deleted by a member user.  recover and gc name it,
print the admin's command, keep the set cleanup_pending, and finish the rest
(real dev cloud; the stuck state is made with the admin's reset-state)."""

import json

from cgsnap import catalog, manifest


def _crashed_with_a_stuck_snapshot(inst):
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    stuck = doc["members"][1]["snapshot_id"]
    inst.lab.admin.volume_snapshots.reset_state(stuck, "creating")
    cat = catalog.Catalog(f"sqlite:///{inst.conf.parent}/state/catalog.db")
    cat.save(dict(doc, status=manifest.STATUS_CREATING))  # as a create killed in the window
    return doc["id"], stuck


def test_recover_and_gc_name_a_snapshot_stuck_in_creating(make_instance):
    inst = make_instance(n_data=2, name="catalog-stuck")
    inst.add_config("[snapshot]\ncleanup_timeout = 3\n")
    set_id, stuck = _crashed_with_a_stuck_snapshot(inst)
    command = f"openstack volume snapshot set --state error {stuck}"

    rc, out, err = inst.cgsnap("recover", "-f", "json")
    assert rc == 10
    assert command in err and err.startswith("cgsnap: error: ")
    [row] = json.loads(out)
    assert (row["id"], row["action"], row["result"]) == (set_id, "reverted", "incomplete")
    assert [s.id for s in inst.cinder_snapshots(set_id)] == [stuck]  # the rest is gone
    _, out, _ = inst.cgsnap("show", set_id, "-f", "json")
    doc = json.loads(out)
    assert doc["status"] == "failed" and doc["cleanup_pending"] and command in \
        doc["status_reason"]

    rc, out, err = inst.cgsnap("gc", "--grace-period", "0", "--no-images", "-f", "json")
    assert rc == 10 and command in err
    [gc_row] = json.loads(out)
    assert (gc_row["id"], gc_row["action"]) == (stuck, "stuck") and command in gc_row["reason"]

    inst.lab.admin.volume_snapshots.reset_state(stuck, "error")  # what the admin does
    rc, out, err = inst.cgsnap("recover", "-f", "json")
    assert rc == 0, err
    assert [r["result"] for r in json.loads(out)] == ["ok"]
    assert inst.cinder_snapshots(set_id) == []
