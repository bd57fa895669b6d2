"""Protected sets (issue 14): ``cgsnap_manifests.protected``, mirrored from the
manifest's top-level ``protected`` (schema v2), indexed so that prune and
delete can find them without reading bodies.  Existing rows are not protected
(no manifest before schema v2 could be).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("cgsnap_manifests") as batch:
        batch.add_column(sa.Column("protected", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    op.create_index("ix_cgsnap_manifests_protected", "cgsnap_manifests", ["protected"])
