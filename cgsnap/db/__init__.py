"""The catalog's schema, versioned with Alembic.

Stored formats evolve in place: every change to the catalog's tables is an
Alembic revision under ``cgsnap/db/migrations/versions`` that upgrades an
existing SQLite, PostgreSQL or MariaDB catalog.  :func:`upgrade` runs at
engine creation (under :func:`cgsnap.lock.schema_lock`):

* a fresh database gets every revision;
* a catalog made before Alembic was introduced (it has ``cgsnap_manifests``
  but no version table) is *stamped* at revision 0001, which is exactly that
  schema, and then upgraded: it is never re-created;
* a catalog already at the head costs one SELECT.

The version table is ``cgsnap_alembic_version``, not Alembic's default
``alembic_version``, because the catalog and TaskFlow's logbooks (which
have their own Alembic history) may share one database.
"""

import os

import sqlalchemy as sa

VERSION_TABLE = "cgsnap_alembic_version"
BASELINE = "0001"     # the schema of cgsnap before Alembic (metadata.create_all)
HEAD = "0003"         # keep in step with the newest file in migrations/versions
MANIFESTS = "cgsnap_manifests"


def _config(connection):
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", os.path.join(os.path.dirname(__file__),
                                                        "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(connection):
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade(engine):
    """Bring the catalog at ``engine`` to :data:`HEAD`; return the revision it had
    (``None`` for a fresh database, ``"0001"`` for a catalog from before Alembic)."""
    with engine.connect() as conn:
        found = current_revision(conn)
        legacy = found is None and sa.inspect(conn).has_table(MANIFESTS)
    if found == HEAD:
        return found
    from alembic import command
    with engine.begin() as conn:
        cfg = _config(conn)
        if legacy:
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")
    return BASELINE if legacy else found


def head_of_scripts():
    """The head revision of the shipped scripts (a test keeps :data:`HEAD` in step)."""
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(_config(None)).get_current_head()
