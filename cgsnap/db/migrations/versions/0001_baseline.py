"""Baseline: the catalog as cgsnap made it before Alembic (one table).

A catalog made by that code has no version table; cgsnap.db.upgrade stamps it
at this revision instead of running it.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "cgsnap_manifests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_cgsnap_manifests_instance_id", "cgsnap_manifests", ["instance_id"])
    op.create_index("ix_cgsnap_manifests_status", "cgsnap_manifests", ["status"])
