"""The catalog: ownership (catalog id, host), idempotency, corrupt rows,
secrets in messages, prefix lookup, logbook housekeeping (test driver +
memory backend; tests/functional/test_ownership.py and test_sql_backends.py
repeat the ownership and migration cases on the real cloud and servers)."""

import json
import multiprocessing
import threading

import pytest
import sqlalchemy as sa

from cgsnap import api, catalog, exception, faults, manifest, naming, plan, recovery, runner, state
from cgsnap.conf import CONF


def _cat():
    return catalog.Catalog(state.catalog_url())


def _live_sets(guest, key):
    return [d for d in api.list_snapshot_sets(guest.id)
            if d.get("idempotency_key") == key and d["status"] in ("creating", "available")]


# -- defect 7: one live set per idempotency key --------------------------------------------

def test_idempotency_key_after_a_failure_gives_one_live_set(guest):
    faults.arm("task.SnapshotVolumes", "raise@1")
    with pytest.raises(exception.CgsnapError):
        api.create_snapshot_set(guest.name, idempotency_key="nightly")
    second = api.create_snapshot_set(guest.name, idempotency_key="nightly")
    third = api.create_snapshot_set(guest.name, idempotency_key="nightly")
    assert third["id"] == second["id"] and second["status"] == "available"
    assert len(api.list_snapshot_sets(guest.id)) == 2  # the failed one and the live one
    assert [d["id"] for d in _live_sets(guest, "nightly")] == [second["id"]]


def _doc(instance_id, key, status=manifest.STATUS_CREATING):
    doc = manifest.new(naming.new_set_id(), "dup", {"id": instance_id, "name": "g"}, [], {},
                       idempotency_key=key)
    doc["status"] = status
    return doc


def _try_create(url, instance_id, key, out):
    try:
        catalog.Catalog(url).create(_doc(instance_id, key))
        out.append("ok")
    except exception.CgsnapError as e:
        out.append(type(e).__name__)


def test_one_live_set_per_key_holds_under_concurrent_threads():
    url = state.catalog_url()
    _cat()  # schema made once, before the race
    out = []
    threads = [threading.Thread(target=_try_create, args=(url, "i-1", "k", out))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out.count("ok") == 1, out
    assert set(out) - {"ok"} == {"DuplicateSet"}


def _proc_create(url, instance_id, key, queue):
    catalog._engines.clear()  # a fresh process opens its own engine
    out = []
    _try_create(url, instance_id, key, out)
    queue.put(out[0])


def test_one_live_set_per_key_holds_across_processes():
    url = state.catalog_url()
    _cat()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_proc_create, args=(url, "i-2", "k", queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert results.count("ok") == 1, results
    # a failed set frees its key for the next attempt
    [doc] = _cat().list(instance_id="i-2")
    _cat().save(dict(doc, status=manifest.STATUS_FAILED))
    _cat().create(_doc("i-2", "k"))


# -- defect 8: a shared catalog, several hosts --------------------------------------------

def _crashed_set(guest):
    set_id = naming.new_set_id()
    inst = guest.hypervisor.get_instance(guest.id)
    members, _ = plan.members(inst, set_id, {"all_volumes": True})
    _cat().create(manifest.new(set_id, "crashed", inst, members, {}))
    return set_id


def test_recover_leaves_another_hosts_set_alone(guest):
    CONF.set_override("host", "host-a")
    set_id = _crashed_set(guest)
    CONF.set_override("host", "host-b")
    rows = recovery.recover()
    assert [(r["id"], r["action"]) for r in rows] == [(set_id, "skipped")]
    assert "host-a" in rows[0]["result"]
    assert _cat().get(set_id)["status"] == "creating"
    CONF.set_override("host", "host-a")
    assert [r["action"] for r in recovery.recover()] == ["reverted"]


def test_finalize_refuses_a_set_that_is_no_longer_creating(guest):
    def other_host_reverts_it(_point):  # what another host's recover used to do
        cat = _cat()
        [doc] = cat.list(instance_id=guest.id)
        cat.save(dict(doc, status=manifest.STATUS_FAILED, status_reason="reverted by host-b"))

    faults.arm("task.FinalizeSet", other_host_reverts_it)
    with pytest.raises(exception.CgsnapError, match="no longer 'creating'"):
        api.create_snapshot_set(guest.name)
    [doc] = api.list_snapshot_sets(guest.id)
    assert doc["status"] == "failed"
    assert guest.backend.list_snapshots(doc["id"]) == []


# -- defect 13: a corrupt manifest ----------------------------------------------------------

def _corrupt(set_id):
    cat = _cat()
    with cat.engine.begin() as conn:
        body = json.loads(conn.execute(sa.select(catalog.manifests.c.body).where(
            catalog.manifests.c.id == set_id)).scalar())
        body["name"] = "tampered"
        conn.execute(catalog.manifests.update().where(catalog.manifests.c.id == set_id)
                     .values(body=json.dumps(body)))


def test_a_corrupt_manifest_is_reported_and_blocks_nothing(guest):
    good = api.create_snapshot_set(guest.name)
    bad = _crashed_set(guest)
    _corrupt(bad)
    rows = {d["id"]: d for d in api.list_snapshot_sets()}
    assert rows[good["id"]]["status"] == "available"
    assert rows[bad]["status"] == "corrupt" and "checksum" in rows[bad]["status_reason"]
    rec = {r["id"]: r for r in recovery.recover()}
    assert rec[bad]["action"] == "skipped" and "corrupt" in rec[bad]["result"]
    assert api.create_snapshot_set(guest.name)["status"] == "available"


def test_an_unverified_manifest_is_never_resealed(guest):
    from cgsnap.tasks.catalog import RecordSet
    set_id = _crashed_set(guest)
    _corrupt(set_id)
    RecordSet().revert(set_id=set_id, result=None)
    with pytest.raises(exception.IntegrityError):
        _cat().get(set_id)
    rows = {d["id"]: d for d in api.list_snapshot_sets()}
    assert rows[set_id]["status"] == "corrupt" and "failed" in rows[set_id]["status_reason"]


# -- defect 12: no password in messages -----------------------------------------------------

@pytest.mark.parametrize("option", ["persistence_connection", "catalog_connection"])
def test_database_passwords_are_never_printed(guest, option):
    CONF.set_override(option, "postgresql+psycopg2://cg:s3cr3t@127.0.0.1:9/nowhere")
    with pytest.raises(exception.ConfigError) as err:
        api.create_snapshot_set(guest.name)
    assert "s3cr3t" not in str(err.value) and "***" in str(err.value)


# -- defect 15: prefix lookup, logbooks -----------------------------------------------------

def test_a_prefix_of_wildcards_matches_nothing(guest):
    api.create_snapshot_set(guest.name)
    for prefix in ("________", "%%%%%%%%"):
        with pytest.raises(exception.SnapshotSetNotFound):
            api.show_snapshot_set(prefix)


def test_logbooks_of_finished_flows_are_pruned(guest):
    doc = api.create_snapshot_set(guest.name)
    api.delete_snapshot_set(doc["id"])
    names = [b.name for b in runner.persistence_backend().get_connection().get_logbooks()]
    assert not [n for n in names if doc["id"] in n]
    # their flow and atom details went with them (SQLite enforces the cascade)
    eng = sa.create_engine(CONF.persistence_connection)
    try:
        with eng.connect() as conn:
            orphans = conn.execute(sa.text(
                "SELECT COUNT(*) FROM flowdetails WHERE parent_uuid NOT IN "
                "(SELECT uuid FROM logbooks)")).scalar()
    finally:
        eng.dispose()
    assert orphans == 0


def test_gc_prunes_old_logbooks_of_failed_flows(guest):
    import datetime
    faults.arm("task.SnapshotVolumes", "raise")
    with pytest.raises(exception.CgsnapError):
        api.create_snapshot_set(guest.name)
    [doc] = api.list_snapshot_sets(guest.id)
    book_uuid = runner.logbook_uuid(f"create-{doc['id']}")
    assert runner.create_flow_detail(doc["id"]) is not None
    assert runner.prune_logbooks(30) == 0  # young: kept
    old = datetime.datetime.utcnow() - datetime.timedelta(days=31)
    eng = sa.create_engine(CONF.persistence_connection)
    try:
        with eng.begin() as conn:
            conn.execute(sa.text("UPDATE logbooks SET created_at = :old WHERE uuid = :u"),
                         {"old": old, "u": book_uuid})
    finally:
        eng.dispose()
    assert runner.prune_logbooks(30) >= 1
    assert runner.create_flow_detail(doc["id"]) is None


def test_the_create_logbook_is_found_without_scanning(guest, monkeypatch):
    set_id = naming.new_set_id()
    faults.arm("task.FinalizeSet", "raise")
    with pytest.raises(exception.CgsnapError):
        api.create_snapshot_set(guest.name)
    [doc] = api.list_snapshot_sets(guest.id)
    conn = runner.persistence_backend().get_connection()
    monkeypatch.setattr(type(conn), "get_logbooks",
                        lambda *a, **k: pytest.fail("scanned every logbook"))
    assert runner.create_flow_detail(doc["id"]) is not None
    assert runner.create_flow_detail(set_id) is None


# -- defect 2: gc after a live migration (two catalogs, one instance) ---------------------

def test_gc_leaves_another_catalogs_sets_alone(guest, tmp_path):
    from cgsnap import gc
    CONF.set_override("state_dir", str(tmp_path / "host-a"))
    a_set = api.create_snapshot_set(guest.name)
    CONF.set_override("state_dir", str(tmp_path / "host-b"))  # the instance moved to B
    b_set = api.create_snapshot_set(guest.name)
    rows = gc.collect(grace_s=0)
    assert [r for r in rows if r["set_id"] == a_set["id"]] == []
    assert len(guest.backend.list_snapshots(a_set["id"])) == 4
    assert len(guest.backend.list_snapshots(b_set["id"])) == 4
    assert all(s["metadata"][naming.META_CATALOG_ID] == catalog.Catalog(
        state.catalog_url()).catalog_id for s in guest.backend.list_snapshots(b_set["id"]))
    rows = gc.collect(grace_s=0, any_catalog=True, dry_run=True)
    assert {r["set_id"] for r in rows} == {a_set["id"]}


# -- migrations: a catalog made by the code before Alembic ---------------------------------

def test_a_catalog_from_before_alembic_is_upgraded_in_place(tmp_path):
    from tests import catalog_legacy
    url = f"sqlite:///{tmp_path}/old/catalog.db"
    ids = catalog_legacy.populate(url)
    catalog_legacy.check_upgraded(url, ids)


def test_cgsnap_list_shows_a_corrupt_row(guest, tmp_path):
    import io

    from cgsnap.cli import main as cli
    conf = tmp_path / "cgsnap.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[libvirt]\nuri = {guest.uri}\n")
    set_id = _crashed_set(guest)
    _corrupt(set_id)
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["--config-file", str(conf), "list", "-f", "json"], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    [row] = json.loads(out.getvalue())
    assert (row["id"], row["status"]) == (set_id, "corrupt")
    out = io.StringIO()
    assert cli.run(["--config-file", str(conf), "show", set_id], stdout=out,
                   stderr=err) == exception.EXIT_INTEGRITY


def _create_as_host(host, state_dir, name, queue):
    # A forked child inherits the parent's fan-out pool object but not its
    # worker threads: a submitted create would never run.
    from cgsnap.tasks import volume
    volume._pool = None
    CONF.set_override("host", host)
    CONF.set_override("state_dir", state_dir)  # its own locks: another host
    faults.arm("task.RecordSet", "hang=0.5")   # both pass the key lookup before either records
    try:
        doc = api.create_snapshot_set(name, idempotency_key="shared-key")
        queue.put(("ok", doc["id"]))
    except exception.CgsnapError as e:
        queue.put((type(e).__name__, str(e)))
    except BaseException as e:  # noqa: BLE001 - report it instead of leaving the parent waiting
        queue.put(("unexpected", repr(e)))
        raise


def test_two_hosts_racing_one_key_on_a_shared_catalog_make_one_live_set(guest, tmp_path):
    CONF.set_override("catalog_connection", f"sqlite:///{tmp_path}/shared/catalog.db")
    _cat()  # schema made before the race
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create_as_host,
                         args=(f"host-{i}", str(tmp_path / f"state-{i}"), guest.name, queue))
             for i in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    live = [d for d in _cat().list(instance_id=guest.id)
            if d["status"] in ("creating", "available")]
    assert len(live) == 1, results
    # the loser's insert hit the unique index: it returns the winner's set, or
    # (if that is still creating) refuses with Locked, naming the key
    assert ("ok", live[0]["id"]) in results, results
    for outcome, text in results:
        assert (outcome, text) == ("ok", live[0]["id"]) or (
            outcome == "Locked" and "shared-key" in text), results
