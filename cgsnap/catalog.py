"""The catalog of manifests: SQLAlchemy, SQLite by default, any URL works.

Each manifest is stored whole (sealed JSON) in one row, together with the
columns we query on.  Every write replaces the row inside one transaction, so
a reader never sees a half-written manifest, and every read verifies the
checksum.

The schema is versioned with Alembic (:mod:`cgsnap.db`); opening a catalog
upgrades it in place.  Besides the manifests the catalog keeps its own random
id (``cgsnap_meta``), which every member carries as ``cgsnap_catalog_id``;
each row records the ``[DEFAULT] host`` that made the set, and ``live_key``
(the idempotency key while the set is creating or available, under a unique
index) keeps one live set per key.  A row whose manifest does not verify is
skipped by :meth:`Catalog.list` (or shown as ``corrupt``) and is never
re-sealed: :meth:`Catalog.mark` changes only its status column.
"""

import json
import os
import re
import threading
from typing import NamedTuple, Optional

import sqlalchemy as sa
from oslo_log import log as logging

from cgsnap import db, exception, lock, manifest
from cgsnap.conf import CONF

LOG = logging.getLogger(__name__)

_metadata = sa.MetaData()

# The catalog's tables as the code queries them; cgsnap/db/migrations makes
# and upgrades them (never metadata.create_all).
manifests = sa.Table(
    "cgsnap_manifests", _metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("body", sa.Text, nullable=False),
    # The [DEFAULT] host that made the set (NULL: made before revision 0002).
    sa.Column("host", sa.String(255), nullable=True),
    # The idempotency key while the set is live (creating/available), else NULL;
    # unique with instance_id: one live set per key.
    sa.Column("live_key", sa.String(255), nullable=True),
    # The manifest's `protected` (schema v2; revision 0003): never pruned, and
    # deleted only with --force.
    sa.Column("protected", sa.Boolean, nullable=False, server_default=sa.false(), index=True),
)

meta = sa.Table(
    "cgsnap_meta", _metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

HEAD_REVISION = db.HEAD
LIVE_KEY_STATUSES = (manifest.STATUS_CREATING, manifest.STATUS_AVAILABLE)
STATUS_CORRUPT = "corrupt"  # shown by list() for a row whose manifest does not verify


class DuplicateSet(exception.Locked):
    """Another live set of this instance already holds the idempotency key."""


class StatusChanged(exception.Locked):
    """A compare-and-set found the set in another status (or owned by another host)."""


def display_url(url):
    """``url`` fit to print or log: the password replaced by ``***``."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: show nothing of it
        return "(unparsable database URL)"


def this_host():
    return CONF.host


_engines = {}
_engines_lock = threading.Lock()


def _engine(url):
    with _engines_lock:
        eng = _engines.get(url)
        if eng is None:
            if url.startswith("sqlite:///"):
                directory = os.path.dirname(url[len("sqlite:///"):])
                if directory:
                    os.makedirs(directory, exist_ok=True)
            # pool_pre_ping: a database server that restarted (or dropped an
            # idle connection) costs a reconnect, not a failed command.
            eng = sa.create_engine(url, future=True,
                                   pool_pre_ping=not url.startswith("sqlite"))
            if eng.dialect.name == "sqlite":
                @sa.event.listens_for(eng, "connect")
                def _sqlite_pragmas(dbapi_conn, _record):
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                    cur.execute("PRAGMA busy_timeout=10000")
                    cur.close()
            try:
                with lock.schema_lock():
                    _upgrade(eng)
            except sa.exc.SQLAlchemyError as e:
                raise exception.ConfigError(
                    f"cannot open the catalog {display_url(url)}: {_first_line(e)}") from None
            _engines[url] = eng
        return eng


def _upgrade(eng):
    """Run the migrations.  The schema lock is per host: two hosts sharing a
    server catalog may race the first upgrade; the loser finds the winner's
    work done."""
    try:
        was = db.upgrade(eng)
    except sa.exc.SQLAlchemyError:
        with eng.connect() as conn:
            if db.current_revision(conn) != db.HEAD:
                raise
        return
    if was != db.HEAD:
        LOG.info("catalog %s upgraded from revision %s to %s", display_url(str(eng.url)),
                 was or "(empty)", db.HEAD)


def _first_line(err):
    return str(getattr(err, "orig", None) or err).splitlines()[0]


class Row(NamedTuple):
    """One catalog row: its columns, and the verified manifest or the reason it failed."""
    id: str
    instance_id: str
    name: str
    status: str
    host: Optional[str]
    created_at: str
    doc: Optional[dict]
    error: Optional[str]

    def placeholder(self):
        """What ``list`` shows for a row whose manifest does not verify."""
        return {"id": self.id, "name": self.name, "instance_id": self.instance_id,
                "instance_name": None, "status": STATUS_CORRUPT,
                "status_reason": f"{self.error} (catalog status: {self.status})",
                "consistency": None, "members": [], "freeze": {},
                "created_at": self.created_at, "host": self.host}


_ROW_COLUMNS = (manifests.c.id, manifests.c.instance_id, manifests.c.name, manifests.c.status,
                manifests.c.host, manifests.c.created_at, manifests.c.body)


def _row(r):
    try:
        doc, error = manifest.verify(json.loads(r.body)), None
    except (exception.IntegrityError, ValueError) as e:
        doc, error = None, str(e).splitlines()[0] if str(e) else type(e).__name__
    return Row(r.id, r.instance_id, r.name, r.status, r.host, r.created_at, doc, error)


class Catalog:
    """Manifest store.  Thread-safe; cheap to construct (engines are cached)."""

    def __init__(self, url):
        self.url = url
        self.engine = _engine(url)

    @property
    def catalog_id(self):
        """The random id made once for this catalog (revision 0002)."""
        with _engines_lock:
            cached = _catalog_ids.get(self.url)
        if cached:
            return cached
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(meta.c.value).where(
                meta.c.key == "catalog_id")).scalar()
        if not value:
            raise exception.IntegrityError(f"catalog {display_url(self.url)} has no catalog id")
        with _engines_lock:
            _catalog_ids[self.url] = value
        return value

    def _write(self, doc, insert, expect_status=None):
        sealed = manifest.seal(doc)
        row = {
            "id": sealed["id"], "instance_id": sealed["instance_id"], "name": sealed["name"],
            "status": sealed["status"], "created_at": sealed["created_at"],
            "updated_at": sealed["updated_at"], "idempotency_key": sealed.get("idempotency_key"),
            "live_key": (sealed.get("idempotency_key")
                         if sealed["status"] in LIVE_KEY_STATUSES else None),
            "protected": bool(sealed.get("protected")),
            "body": json.dumps(sealed, sort_keys=True, ensure_ascii=False),
        }
        try:
            with self.engine.begin() as conn:
                if insert:
                    conn.execute(manifests.insert().values(host=this_host(), **row))
                elif expect_status is not None:
                    # compare-and-set: only the flow that owns the set may move it on
                    res = conn.execute(manifests.update().where(
                        manifests.c.id == row["id"], manifests.c.status == expect_status,
                        sa.or_(manifests.c.host == this_host(), manifests.c.host.is_(None)))
                        .values(**row))
                    if res.rowcount != 1:
                        self._status_changed(conn, row["id"], expect_status)
                else:
                    res = conn.execute(
                        manifests.update().where(manifests.c.id == row["id"]).values(**row))
                    if res.rowcount == 0:
                        conn.execute(manifests.insert().values(host=this_host(), **row))
        except sa.exc.IntegrityError as e:
            if row["live_key"] is not None:
                raise DuplicateSet(
                    f"instance {row['instance_id']} already has a live snapshot set with "
                    f"idempotency key {row['live_key']!r}") from None
            raise exception.ConfigError(f"cannot write manifest {row['id']}: {_first_line(e)}") \
                from None
        except sa.exc.SQLAlchemyError as e:
            raise exception.ConfigError(f"cannot write manifest {row['id']}: {_first_line(e)}") \
                from None
        return sealed

    @staticmethod
    def _status_changed(conn, set_id, expect_status):
        now = conn.execute(sa.select(manifests.c.status, manifests.c.host)
                           .where(manifests.c.id == set_id)).first()
        if now is None:
            raise StatusChanged(f"set {set_id} is no longer '{expect_status}': it was removed")
        raise StatusChanged(
            f"set {set_id} is no longer '{expect_status}' as this flow left it: it is "
            f"'{now.status}' (host {now.host or 'unknown'}); not overwritten")

    def create(self, doc):
        return self._write(doc, insert=True)

    def save(self, doc, expect_status=None):
        """Replace the manifest.  With ``expect_status``, only if the row still
        has that status and this host made it (compare-and-set in SQL)."""
        return self._write(doc, insert=False, expect_status=expect_status)

    def update(self, set_id, **changes):
        doc = self.get(set_id)
        doc.update(changes)
        return self.save(doc)

    def mark(self, set_id, status, **changes):
        """Set the status (and ``changes``) of a set whose manifest may not verify.

        A manifest that verifies is updated and sealed as usual.  One that
        does not is never re-sealed (that would bless whatever corrupted it
        with a fresh checksum): only the ``status`` column changes, the
        stored body stays as it was, and ``list`` keeps showing it as
        ``corrupt`` with the new status in the reason.  Returns the sealed
        manifest, or ``None`` for a corrupt one."""
        try:
            doc = self.get(set_id)
        except exception.IntegrityError as e:
            LOG.error("set %s: manifest does not verify (%s); only its status column is set "
                      "to %s", set_id, e, status)
            values = {"status": status, "updated_at": manifest.isotime()}
            if status not in LIVE_KEY_STATUSES:
                values["live_key"] = None
            with self.engine.begin() as conn:
                conn.execute(manifests.update().where(manifests.c.id == set_id).values(**values))
            return None
        doc.update(changes, status=status)
        return self.save(doc)

    def get(self, set_id, verify=True):
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(manifests.c.body).where(manifests.c.id == set_id)).first()
        if row is None:
            raise exception.SnapshotSetNotFound(f"no snapshot set with id {set_id}")
        try:
            doc = json.loads(row.body)
        except ValueError as e:
            raise exception.IntegrityError(f"manifest {set_id} is not JSON: {e}") from None
        return manifest.verify(doc) if verify else doc

    def find(self, set_id_or_prefix):
        """Exact id, or a unique prefix of at least 8 characters (hex digits and dashes)."""
        if len(set_id_or_prefix) >= 36:
            return self.get(set_id_or_prefix)
        if len(set_id_or_prefix) < 8 or not _PREFIX_RE.fullmatch(set_id_or_prefix):
            raise exception.SnapshotSetNotFound(
                f"no snapshot set with id {set_id_or_prefix} (give the full id or 8+ characters "
                "of it: hex digits and dashes)")
        with self.engine.connect() as conn:
            ids = [r.id for r in conn.execute(
                sa.select(manifests.c.id).where(manifests.c.id.startswith(
                    set_id_or_prefix.lower(), autoescape=True)))]
        if len(ids) != 1:
            what = "no" if not ids else f"{len(ids)}"
            raise exception.SnapshotSetNotFound(
                f"{what} snapshot sets match id prefix {set_id_or_prefix}")
        return self.get(ids[0])

    def by_idempotency_key(self, instance_id, key):
        """The live (creating or available) set holding ``key``, or ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(manifests.c.id).where(
                manifests.c.instance_id == instance_id,
                manifests.c.live_key == key)).first()
        return self.get(row.id) if row else None

    def rows(self, instance_id=None, status=None):
        """Every row (oldest first) as a :class:`Row`; a manifest that does not
        verify gives ``doc=None`` and the reason, instead of an exception."""
        q = sa.select(*_ROW_COLUMNS).order_by(manifests.c.created_at)
        if instance_id:
            q = q.where(manifests.c.instance_id == instance_id)
        if status:
            q = q.where(manifests.c.status == status)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def list(self, instance_id=None, status=None, corrupt=False):
        """Verified manifests, oldest first.  Rows that do not verify are skipped
        and logged, or with ``corrupt=True`` returned as status ``corrupt``
        placeholders (what ``cgsnap list`` shows)."""
        out = []
        for row in self.rows(instance_id, status):
            if row.doc is not None:
                out.append(row.doc)
                continue
            LOG.warning("skipping set %s: its manifest does not verify: %s", row.id, row.error)
            if corrupt:
                out.append(row.placeholder())
        return out

    def delete(self, set_id):
        with self.engine.begin() as conn:
            conn.execute(manifests.delete().where(manifests.c.id == set_id))


_catalog_ids = {}
_PREFIX_RE = re.compile(r"[0-9a-fA-F-]+")
