"""A catalog as the code before Alembic made it (``metadata.create_all`` of
one table, no version table), with the duplicate idempotency keys that
defect 7 let it collect; and the checks that an upgrade kept every row and
resolved the duplicates.  Used by the unit tier (SQLite) and by
tests/functional/test_sql_backends.py (PostgreSQL, MariaDB)."""

import json

import sqlalchemy as sa

from cgsnap import catalog, manifest, naming

_legacy = sa.MetaData()
LEGACY_TABLE = sa.Table(  # cgsnap/catalog.py as of commit 09aada4, verbatim
    "cgsnap_manifests", _legacy,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("body", sa.Text, nullable=False),
)

INSTANCE = "5a1e4c1e-0000-4000-8000-00000000c0de"

# (label, idempotency key, status, created_at): in insertion order, which is not time order.
ROWS = [
    ("k-newest-available", "k", "available", "2026-11-03T00:00:00.000000Z"),
    ("k-failed", "k", "failed", "2026-11-01T00:00:00.000000Z"),
    ("k-older-available", "k", "available", "2026-11-02T00:00:00.000000Z"),
    ("k-creating", "k", "creating", "2026-11-04T00:00:00.000000Z"),
    ("k2-creating-old", "k2", "creating", "2026-11-01T00:00:00.000000Z"),
    ("k2-creating-new", "k2", "creating", "2026-11-02T00:00:00.000000Z"),
    ("no-key", None, "available", "2026-11-05T00:00:00.000000Z"),
]
LIVE_AFTER = {"k-newest-available": "k", "k2-creating-new": "k2"}


def populate(url):
    """Make the legacy catalog at ``url``; return {label: set id}."""
    if url.startswith("sqlite:///"):
        import os
        os.makedirs(os.path.dirname(url[len("sqlite:///"):]), exist_ok=True)
    eng = sa.create_engine(url)
    ids = {}
    try:
        _legacy.create_all(eng)
        with eng.begin() as conn:
            for label, key, status, created in ROWS:
                doc = manifest.new(naming.new_set_id(), label, {"id": INSTANCE, "name": "g"},
                                   [], {}, idempotency_key=key)
                doc.update(status=status, created_at=created)
                sealed = manifest.seal(doc)
                conn.execute(LEGACY_TABLE.insert().values(
                    id=sealed["id"], instance_id=INSTANCE, name=label, status=status,
                    created_at=created, updated_at=sealed["updated_at"], idempotency_key=key,
                    body=json.dumps(sealed, sort_keys=True, ensure_ascii=False)))
                ids[label] = sealed["id"]
    finally:
        eng.dispose()
    return ids


def check_upgraded(url, ids):
    """Open the catalog with today's code and check what the upgrade did."""
    catalog._engines.pop(url, None)
    cat = catalog.Catalog(url)
    insp = sa.inspect(cat.engine)
    assert {"cgsnap_alembic_version", "cgsnap_meta", "cgsnap_manifests"} <= set(
        insp.get_table_names())
    with cat.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM cgsnap_alembic_version")).scalar()
        live = dict(conn.execute(sa.select(catalog.manifests.c.name, catalog.manifests.c.live_key)
                                 .where(catalog.manifests.c.live_key.isnot(None))).all())
    assert version == catalog.HEAD_REVISION
    assert live == LIVE_AFTER
    docs = cat.list()  # every old row still verifies, none was lost
    assert sorted(d["id"] for d in docs) == sorted(ids.values())
    catalog_id = cat.catalog_id
    assert len(catalog_id) == 32
    found = cat.by_idempotency_key(INSTANCE, "k")
    assert found["id"] == ids["k-newest-available"]
    doc = manifest.new(naming.new_set_id(), "another", {"id": INSTANCE, "name": "g"}, [], {},
                       idempotency_key="k")
    try:
        cat.create(doc)
    except catalog.DuplicateSet:
        pass
    else:
        raise AssertionError("a second live set for key 'k' was accepted")
    # revision 0003: the protected column, false for every old row, mirrors the manifest
    with cat.engine.connect() as conn:
        flags = set(conn.execute(sa.select(catalog.manifests.c.protected)).scalars())
    assert flags == {False}
    kept = dict(cat.get(ids["k-newest-available"]))
    kept.update(schema_version=manifest.SCHEMA_VERSION, labels={}, protected=True)
    cat.save(kept)
    with cat.engine.connect() as conn:
        assert conn.execute(sa.select(catalog.manifests.c.id).where(
            catalog.manifests.c.protected.is_(True))).scalars().all() == [kept["id"]]
    catalog._engines.pop(url, None)  # opening it again changes nothing
    catalog._catalog_ids.pop(url, None)
    again = catalog.Catalog(url)
    assert again.catalog_id == catalog_id
    assert len(again.list()) == len(ids)
