"""`cgsnap create --label`, `protect`/`unprotect`, `delete --force` and `prune`
through the CLI, on the test driver and the fake storage backend.  The
decision itself is tests/unit/test_retention.py."""

import json

import pytest

from cgsnap import api, exception, faults, manifest


@pytest.fixture
def run(cli_run):
    return cli_run


def _create(run, guest, *extra):
    rc, out, err = run("create", "--all-volumes", guest.name, "-f", "json", *extra)
    assert rc == 0, err
    return json.loads(out)


def _backdate(sets_days_old):
    """Make the sets look N days old (the catalog stores created_at in the manifest)."""
    import datetime
    cat = api.catalog()
    now = datetime.datetime.now(datetime.timezone.utc)
    for set_id, days in sets_days_old.items():
        doc = cat.get(set_id)
        doc["created_at"] = manifest.isotime(now - datetime.timedelta(days=days))
        cat.save(doc)


def _snapshots_of(guest, set_id):
    return [s for s in guest.backend.snapshots.values()
            if s["metadata"].get("cgsnap_set_id") == set_id]


def test_labels_go_into_the_manifest_and_every_member(run, guest):
    doc = _create(run, guest, "--label", "policy=nightly", "--label", "tier=db")
    assert doc["labels"] == {"policy": "nightly", "tier": "db"}
    snaps = _snapshots_of(guest, doc["id"])
    assert len(snaps) == 4
    assert all(s["metadata"]["cgsnap_label_policy"] == "nightly" for s in snaps)


@pytest.mark.parametrize("label,code", [("nokey", exception.EXIT_USAGE),
                                        ("=v", exception.EXIT_USAGE),
                                        ("bad key=v", exception.EXIT_REFUSED)])
def test_a_bad_label_is_refused_before_anything(run, guest, label, code):
    rc, _, err = run("create", "--all-volumes", guest.name, "--label", label)
    assert rc == code
    assert guest.backend.snapshots == {} and guest.frozen_count() == 0
    assert run("list", "-f", "json")[1].strip() == "[]"


def test_a_protected_set_is_deleted_only_with_force(run, guest):
    doc = _create(run, guest)
    rc, out, _ = run("protect", doc["id"][:8], "-f", "json")
    assert rc == 0 and json.loads(out) == [{"id": doc["id"], "name": doc["name"],
                                            "protected": True}]
    rc, _, err = run("delete", doc["id"])
    assert rc == exception.EXIT_REFUSED and "is protected" in err and err.count("\n") == 1
    assert len(_snapshots_of(guest, doc["id"])) == 4
    assert run("unprotect", doc["id"])[0] == 0
    assert run("protect", doc["id"])[0] == 0
    rc, _, err = run("delete", "--force", doc["id"])
    assert rc == 0, err
    assert _snapshots_of(guest, doc["id"]) == []


def test_a_v1_set_can_be_protected(run, guest):
    doc = _create(run, guest)
    cat = api.catalog()
    v2_only = set(manifest.schema(2)["properties"]) - set(manifest.schema(1)["properties"])
    v1 = {k: v for k, v in cat.get(doc["id"]).items() if k not in v2_only}
    v1["schema_version"] = 1
    cat.save(v1)
    assert cat.get(doc["id"])["schema_version"] == 1
    assert run("protect", doc["id"])[0] == 0
    again = cat.get(doc["id"])
    assert (again["schema_version"], again["protected"]) == (2, True)


def test_prune_dry_run_reports_every_set_and_deletes_nothing(run, guest):
    ids = [_create(run, guest)["id"] for _ in range(4)]
    _backdate({ids[0]: 3, ids[1]: 2, ids[2]: 1, ids[3]: 0})
    rc, out, err = run("prune", "--keep-last", "2", "--dry-run", "-f", "json")
    assert rc == 0, err
    rows = {r["id"]: r for r in json.loads(out)}
    assert set(rows) == set(ids)
    assert [rows[i]["keep"] for i in ids] == [False, False, True, True]
    assert [rows[i]["result"] for i in ids] == ["would delete"] * 2 + ["kept"] * 2
    assert rows[ids[3]]["reason"] == "keep-last"
    assert sum(len(_snapshots_of(guest, i)) for i in ids) == 16


def test_prune_deletes_through_the_delete_flow_and_never_the_last_good_set(run, guest):
    good = _create(run, guest)["id"]
    faults.arm("volume.create_snapshot", "raise@1")
    rc, _, _ = run("create", "--all-volumes", guest.name)
    faults.reset()
    assert rc == exception.EXIT_SNAPSHOT_FAILED
    [failed] = [d["id"] for d in api.list_snapshot_sets() if d["status"] == "failed"]
    _backdate({good: 30, failed: 0})
    rc, out, err = run("prune", "--keep-within", "2d", "-f", "json")
    assert rc == 0, err
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows[good]["keep"] and rows[good]["result"] == "kept"
    assert rows[failed]["result"] == "deleted"
    assert [d["id"] for d in api.list_snapshot_sets()] == [good]


def test_prune_keeps_a_busy_set_and_goes_on_past_a_failed_delete(run, guest):
    ids = [_create(run, guest)["id"] for _ in range(3)]
    _backdate({ids[0]: 3, ids[1]: 2, ids[2]: 0})
    # a volume was made from one snapshot of the oldest set: Cinder would refuse
    snap = _snapshots_of(guest, ids[0])[0]
    clone = guest.backend.add_volume(attached_to=[])
    guest.backend.volumes[clone]["snapshot_id"] = snap["id"]
    faults.arm("volume.delete_snapshot", "raise")
    try:
        rc, out, err = run("prune", "--keep-last", "1", "-f", "json")
    finally:
        faults.reset()
    rows = {r["id"]: r for r in json.loads(out)}
    assert (rows[ids[0]]["keep"], rows[ids[0]]["reason"]) == (True, "busy")
    assert rows[ids[1]]["result"].startswith("failed:")
    assert rows[ids[2]]["result"] == "kept"
    assert rc == exception.EXIT_CLEANUP and f"set {ids[1]}" in err


@pytest.mark.parametrize("argv,code,text", [
    (["prune"], exception.EXIT_REFUSED, "no rule"),
    (["prune", "--keep-last", "-1"], exception.EXIT_USAGE, None),
    (["prune", "--keep-within", "2 days"], exception.EXIT_USAGE, None),
    (["prune", "--keep-last", "1", "--timezone", "Mars/Olympus"], exception.EXIT_REFUSED,
     "unknown time zone"),
])
def test_prune_refuses_bad_policies_in_one_line(run, guest, argv, code, text):
    _create(run, guest)
    rc, _, err = run(*argv)
    assert rc == code
    if text:
        assert text in err and err.count("\n") == 1 and err.startswith("cgsnap: error: ")
    assert len(api.list_snapshot_sets()) == 1


def test_an_empty_policy_deletes_only_when_told_and_keeps_the_floor(run, guest):
    ids = [_create(run, guest)["id"] for _ in range(3)]
    _backdate({ids[0]: 2, ids[1]: 1, ids[2]: 0})
    rc, out, err = run("prune", "--no-rules-delete-all", "-f", "json")
    assert rc == 0, err
    assert [d["id"] for d in api.list_snapshot_sets()] == [ids[2]]


def test_prune_with_a_label_touches_only_those_sets(run, guest):
    nightly = [_create(run, guest, "--label", "policy=nightly")["id"] for _ in range(2)]
    other = _create(run, guest)["id"]
    _backdate({nightly[0]: 2, nightly[1]: 1, other: 3})
    rc, out, err = run("prune", "--keep-last", "1", "--label", "policy=nightly", "-f", "json")
    assert rc == 0, err
    assert sorted(d["id"] for d in api.list_snapshot_sets()) == sorted([nightly[1], other])


def test_a_simulated_month_of_nightly_runs_never_loses_the_last_good_set(guest, monkeypatch,
                                                                         capsys):
    """30 nights of `create --label policy=nightly` then `prune --keep-daily 7
    --keep-weekly 4 --label policy=nightly`, a third of the creates failing (a
    Cinder fault), a whole failed week in the middle, a manual set now and then;
    the clock is injected, nothing sleeps."""
    import datetime
    import random

    from cgsnap import cleanup
    # a revert watches for late snapshots for SETTLE_S; the fake backend has none
    monkeypatch.setattr(cleanup.delete_volume_members, "__defaults__", (None, 0.05))
    rng = random.Random(20261204)
    start = datetime.datetime(2026, 11, 1, 2, 0, tzinfo=datetime.timezone.utc)
    policy = {"keep_daily": 7, "keep_weekly": 4, "min_keep": 2, "labels": {"policy": "nightly"},
              "timezone": "Europe/Berlin"}
    taken = failed = pruned = 0
    fewest = None
    manual = []
    for day in range(30):
        now = start + datetime.timedelta(days=day, minutes=rng.randint(0, 50))
        monkeypatch.setattr(manifest, "utcnow", lambda now=now: now)
        fails = 10 <= day < 17 or rng.random() < 1 / 3
        if fails:
            faults.arm("volume.create_snapshot", "raise@2")
        try:
            api.create_snapshot_set(guest.name, labels={"policy": "nightly"})
            taken += 1
        except exception.CgsnapError as e:
            assert e.exit_code == exception.EXIT_SNAPSHOT_FAILED, e
            failed += 1
        finally:
            faults.reset()
        if day % 9 == 4:
            manual.append(api.create_snapshot_set(guest.name, labels={"policy": "manual"})["id"])
        before = {d["id"]: d for d in api.list_snapshot_sets()}
        good_before = [d for d in before.values() if d["status"] == "available"
                       and d.get("labels") == {"policy": "nightly"}]
        rows = api.prune(policy, now=now)
        assert not [r for r in rows if r["result"].startswith("failed")]
        pruned += sum(r["result"] == "deleted" and r["status"] == "available" for r in rows)
        after = {d["id"]: d for d in api.list_snapshot_sets()}
        good = [d for d in after.values() if d["status"] == "available"
                and d.get("labels") == {"policy": "nightly"}]
        assert len(good) >= min(2, len(good_before)), f"day {day}: below the floor"
        if good_before:
            newest = max(good_before, key=lambda d: d["created_at"])
            assert newest["id"] in after, f"day {day}: the newest good set was removed"
        assert all(m in after for m in manual), f"day {day}: a manual set was touched"
        assert not [d for d in after.values() if d["status"] == "failed"]  # keep_failed 0
        if len(good_before) >= 2:  # from the day the floor can be met
            fewest = len(good) if fewest is None else min(fewest, len(good))
    with capsys.disabled():
        print(f"\nsimulated month: {taken} sets taken, {failed} failed (removed by prune), "
              f"{pruned} good sets pruned, fewest good nightly sets once there were 2: "
              f"{fewest}; kept at the end: {len(good)} (keep-daily 7, keep-weekly 4, "
              f"min-keep 2)")
    assert taken + failed == 30 and failed >= 7 and pruned > 0
    assert fewest >= 2
