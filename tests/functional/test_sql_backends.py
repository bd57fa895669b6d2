"""The catalog and the TaskFlow logbooks on real SQL servers (PostgreSQL 15,
MariaDB 10.11), as a cloud deployment would run them: a set is created,
listed and deleted with both stores on the server, and a create killed
mid-flow is finished or reverted by `cgsnap recover` from the logbook kept
there.  tools/sqldb.sh starts the server if it is down and gives a fresh
database; if it cannot, this tier fails."""

import json
import os
import subprocess
import uuid

import pytest
import sqlalchemy as sa

from .. import faultcli
from .conftest import ROOT

SQLDB = os.path.join(ROOT, "tools", "sqldb.sh")


@pytest.fixture(params=["postgresql", "mariadb"])
def sql_url(request):
    """A fresh database per test: cgsnap caches engines (and that it created
    its tables) per URL for the life of the process."""
    name = f"cgsnap_fn_{uuid.uuid4().hex[:12]}"
    proc = subprocess.run([SQLDB, "url", request.param, name],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"no {request.param} server: {proc.stderr.strip()}", pytrace=False)
    yield proc.stdout.strip()
    subprocess.run([SQLDB, "drop", request.param, name], capture_output=True, timeout=120)


@pytest.fixture
def inst(make_instance, sql_url):
    inst = make_instance(n_data=2, name="sqlguest")
    inst.conf.write_text(inst.conf.read_text().replace(
        "[libvirt]", f"catalog_connection = {sql_url}\npersistence_connection = {sql_url}\n"
                     "[libvirt]"))
    inst.sql_url = sql_url
    return inst


def _rows(url, table):
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar()
    finally:
        eng.dispose()


def _killed_create(inst, point):
    env = dict(os.environ, CGSNAP_FAULT=f"{point}:kill")
    return subprocess.run([*faultcli.COMMAND, "--config-file", str(inst.conf), "create",
                           "--all-volumes", inst.name, "-f", "json"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_create_list_delete_with_both_stores_on_the_server(inst):
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "available" and len(doc["members"]) == 3
    assert _rows(inst.sql_url, "cgsnap_manifests") == 1
    assert _rows(inst.sql_url, "logbooks") >= 1 and _rows(inst.sql_url, "atomdetails") > 20
    rc, out, _ = inst.cgsnap("list", "-f", "json")
    assert [r["id"] for r in json.loads(out)] == [doc["id"]]
    rc, _, err = inst.cgsnap("delete", doc["id"])
    assert rc == 0, err
    assert _rows(inst.sql_url, "cgsnap_manifests") == 0
    assert inst.cinder_snapshots(doc["id"]) == []


@pytest.mark.parametrize("point,expected", [("task.SnapshotVolumes.created", "reverted"),
                                            ("task.FinalizeSet", "completed")])
def test_recover_resumes_from_the_logbook_on_the_server(inst, point, expected):
    proc = _killed_create(inst, point)
    assert proc.returncode == -9, proc.stderr
    rc, out, err = inst.cgsnap("recover", "-f", "json")
    assert rc == 0, err
    [row] = json.loads(out)
    assert row["action"] == expected and row["result"] == "ok"
    _, out, _ = inst.cgsnap("list", "-f", "json")
    [doc] = json.loads(out)
    snaps = inst.cinder_snapshots(doc["id"])
    if expected == "completed":
        assert doc["status"] == "available"
        assert sorted(s.id for s in snaps) == sorted(
            m["snapshot_id"] for m in json.loads(inst.cgsnap("show", doc["id"], "-f",
                                                             "json")[1])["members"])
    else:
        assert doc["status"] == "failed" and snaps == []


def _kill_other_connections(url):
    """What a server restart does to a client's pooled connections."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            if eng.dialect.name == "postgresql":
                conn.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
                return
            me = conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
            for (pid,) in conn.execute(sa.text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> :me"), {"me": me}).all():
                conn.execute(sa.text(f"KILL {int(pid)}"))
    finally:
        eng.dispose()


def test_a_server_dropping_pooled_connections_costs_a_reconnect_not_a_failure(inst):
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    set_id = json.loads(out)["id"]
    _kill_other_connections(inst.sql_url)
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    _kill_other_connections(inst.sql_url)
    rc, _, err = inst.cgsnap("delete", set_id)
    assert rc == 0, err
    assert _rows(inst.sql_url, "cgsnap_manifests") == 1
