"""The catalog of manifests: SQLAlchemy, SQLite by default, any URL works.

Each manifest is stored whole (sealed JSON) in one row, together with the
columns we query on.  Every write replaces the row inside one transaction, so
a reader never sees a half-written manifest, and every read verifies the
checksum.
"""

import json
import os
import threading

import sqlalchemy as sa

from cgsnap import exception, lock, manifest

_metadata = sa.MetaData()

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
)

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
                    _metadata.create_all(eng)
            except sa.exc.SQLAlchemyError as e:
                raise exception.ConfigError(
                    f"cannot open the catalog {eng.url.render_as_string(hide_password=True)}: "
                    f"{_first_line(e)}") from None
            _engines[url] = eng
        return eng


def _first_line(err):
    return str(getattr(err, "orig", None) or err).splitlines()[0]


class Catalog:
    """Manifest store.  Thread-safe; cheap to construct (engines are cached)."""

    def __init__(self, url):
        self.url = url
        self.engine = _engine(url)

    def _write(self, doc, insert):
        sealed = manifest.seal(doc)
        row = {
            "id": sealed["id"], "instance_id": sealed["instance_id"], "name": sealed["name"],
            "status": sealed["status"], "created_at": sealed["created_at"],
            "updated_at": sealed["updated_at"], "idempotency_key": sealed.get("idempotency_key"),
            "body": json.dumps(sealed, sort_keys=True, ensure_ascii=False),
        }
        try:
            with self.engine.begin() as conn:
                if insert:
                    conn.execute(manifests.insert().values(**row))
                else:
                    res = conn.execute(
                        manifests.update().where(manifests.c.id == row["id"]).values(**row))
                    if res.rowcount == 0:
                        conn.execute(manifests.insert().values(**row))
        except sa.exc.SQLAlchemyError as e:
            raise exception.ConfigError(f"cannot write manifest {row['id']}: {_first_line(e)}") \
                from None
        return sealed

    def create(self, doc):
        return self._write(doc, insert=True)

    def save(self, doc):
        return self._write(doc, insert=False)

    def update(self, set_id, **changes):
        doc = self.get(set_id)
        doc.update(changes)
        return self.save(doc)

    def get(self, set_id, verify=True):
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(manifests.c.body).where(manifests.c.id == set_id)).first()
        if row is None:
            raise exception.SnapshotSetNotFound(f"no snapshot set with id {set_id}")
        doc = json.loads(row.body)
        return manifest.verify(doc) if verify else doc

    def find(self, set_id_or_prefix):
        """Exact id, or a unique prefix of at least 8 characters."""
        if len(set_id_or_prefix) >= 36:
            return self.get(set_id_or_prefix)
        if len(set_id_or_prefix) < 8:
            raise exception.SnapshotSetNotFound(
                f"no snapshot set with id {set_id_or_prefix} (give the full id or 8+ characters)")
        with self.engine.connect() as conn:
            ids = [r.id for r in conn.execute(
                sa.select(manifests.c.id).where(manifests.c.id.startswith(set_id_or_prefix)))]
        if len(ids) != 1:
            what = "no" if not ids else f"{len(ids)}"
            raise exception.SnapshotSetNotFound(
                f"{what} snapshot sets match id prefix {set_id_or_prefix}")
        return self.get(ids[0])

    def by_idempotency_key(self, instance_id, key):
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(manifests.c.id).where(
                manifests.c.instance_id == instance_id,
                manifests.c.idempotency_key == key)).first()
        return self.get(row.id) if row else None

    def list(self, instance_id=None, status=None):
        q = sa.select(manifests.c.body).order_by(manifests.c.created_at)
        if instance_id:
            q = q.where(manifests.c.instance_id == instance_id)
        if status:
            q = q.where(manifests.c.status == status)
        with self.engine.connect() as conn:
            return [manifest.verify(json.loads(r.body)) for r in conn.execute(q)]

    def delete(self, set_id):
        with self.engine.begin() as conn:
            conn.execute(manifests.delete().where(manifests.c.id == set_id))
