"""Flow tests: each factory compiles and validates, its requires/provides are
what we say, and it runs with SQL persistence (``sqlite://``), which proves
every value in the store serialises."""

import contextlib

import pytest
from taskflow import engines, states
from taskflow.persistence import backends, models

from cgsnap import naming
from cgsnap.flows import create, delete


def _sql_backend():
    backend = backends.fetch({"connection": "sqlite://"})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


@pytest.mark.parametrize("factory,module", [(create.create_flow, create),
                                            (delete.delete_flow, delete)])
def test_factory_compiles_and_declares_its_interface(factory, module):
    flow = factory()
    engine = engines.load(flow, store={k: None for k in module.REQUIRES})
    engine.compile()
    engine.prepare()
    engine.validate()
    assert flow.requires == module.REQUIRES
    assert flow.provides == module.PROVIDES
    assert flow.name == module.FLOW_NAME


def test_create_flow_order_keeps_checks_before_the_freeze():
    names = [atom.name for atom in create.create_flow()]
    freeze = names.index("FreezeGuest")
    for check in ("CheckRootDisk", "CheckVolumes", "CheckQuota", "CheckLocalDisks",
                  "CheckAgent", "RecordSet"):
        assert names.index(check) < freeze
    # Only the cuts sit between freeze and thaw; copies come after the thaw.
    assert names[freeze:names.index("ThawGuest") + 1] == [
        "FreezeGuest", "SnapshotLocalDisks", "SnapshotVolumes", "ThawGuest"]
    assert names.index("ExportLocalDisks") > names.index("ThawGuest")
    # Cleanup reverts after the thaw (reverse order), the manifest is marked last.
    assert names.index("RecordSet") < names.index("CleanupVolumeSnapshots") < freeze
    assert names.index("RecordSet") < names.index("CleanupLocalDisks") < freeze


def _options(**kw):
    base = {"all_volumes": True, "exclude_volumes": [], "exclude_root": False,
            "allow_crash_consistent": False, "freeze_timeout": 10.0, "wait_timeout": 10.0}
    base.update(kw)
    return base


def test_create_flow_runs_with_sql_persistence(guest):
    backend = _sql_backend()
    book = models.LogBook("t")
    set_id = naming.new_set_id()
    engine = engines.load_from_factory(
        create.create_flow, backend=backend, book=book, engine="serial",
        store={"instance_ref": guest.name, "set_id": set_id, "options": _options()})
    engine.run()
    assert engine.storage.get_flow_state() == states.SUCCESS
    result = engine.storage.fetch("result")
    assert result["status"] == "available" and len(result["members"]) == 4
    # Everything went through the SQL store and reads back.
    with contextlib.closing(backend.get_connection()) as conn:
        detail = conn.get_logbook(book.uuid).find(engine.storage.flow_uuid)
        assert detail.state == states.SUCCESS
        assert {a.name for a in detail} >= {"FreezeGuest", "SnapshotVolumes", "FinalizeSet"}
    # The factory is recorded so a conductor or `recover` can rebuild the flow.
    assert detail.meta["factory"]["name"].endswith("create.create_flow")
    assert guest.frozen_count() == 0


def test_delete_flow_runs_with_sql_persistence(guest):
    from cgsnap import api
    doc = api.create_snapshot_set(guest.name)
    engine = engines.load_from_factory(delete.delete_flow, backend=_sql_backend(),
                                       book=models.LogBook("d"), engine="serial",
                                       store={"set_id": doc["id"]})
    engine.run()
    assert engine.storage.get_flow_state() == states.SUCCESS
    assert guest.backend.list_snapshots(doc["id"]) == []
