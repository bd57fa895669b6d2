"""Ownership and idempotency: the catalog's id, each set's host, one live set
per idempotency key.

* ``cgsnap_meta`` (key, value) holds ``catalog_id``, a random id made once
  per catalog; every member cgsnap creates carries it as metadata
  (``cgsnap_catalog_id``) so that gc collects only its own catalog's members.
* ``cgsnap_manifests.host``: the ``[DEFAULT] host`` that made the set; NULL
  for sets made before this revision (their owner is unknown).
* ``cgsnap_manifests.live_key``: the idempotency key while the set is
  ``creating`` or ``available``, NULL otherwise, with a unique index on
  (instance_id, live_key).  Both servers and SQLite allow any number of NULLs
  in a unique index, which is what MariaDB (no partial indexes) needs.

Catalogs may hold several live sets for one key (defect 7): before the index
is built, the newest ``available`` set of each key stays live (the newest
``creating`` one if none is available) and the rest get NULL.

Revision ID: 0002
Revises: 0001
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LIVE = ("creating", "available")


def upgrade():
    meta = op.create_table(
        "cgsnap_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.bulk_insert(meta, [{"key": "catalog_id", "value": uuid.uuid4().hex}])
    with op.batch_alter_table("cgsnap_manifests") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("live_key", sa.String(255), nullable=True))
    manifests = sa.table("cgsnap_manifests", sa.column("id"), sa.column("instance_id"),
                         sa.column("status"), sa.column("created_at"),
                         sa.column("idempotency_key"), sa.column("live_key"))
    conn = op.get_bind()
    rows = conn.execute(sa.select(manifests.c.id, manifests.c.instance_id, manifests.c.status,
                                  manifests.c.created_at, manifests.c.idempotency_key)
                        .where(manifests.c.idempotency_key.isnot(None),
                               manifests.c.status.in_(LIVE))).all()
    keep = {}
    for row in rows:
        rank = (row.status == "available", row.created_at, row.id)
        group = (row.instance_id, row.idempotency_key)
        if group not in keep or rank > keep[group][0]:
            keep[group] = (rank, row.id)
    for (_, key), (_, set_id) in keep.items():
        conn.execute(manifests.update().where(manifests.c.id == set_id).values(live_key=key))
    op.create_index("uq_cgsnap_manifests_live_key", "cgsnap_manifests",
                    ["instance_id", "live_key"], unique=True)
    op.create_index("ix_cgsnap_manifests_host", "cgsnap_manifests", ["host"])
