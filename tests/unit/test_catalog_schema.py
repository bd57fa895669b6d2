"""The catalog's Alembic scripts and cgsnap.db agree on the head revision."""

from cgsnap import db


def test_the_head_constant_matches_the_shipped_scripts():
    assert db.head_of_scripts() == db.HEAD
