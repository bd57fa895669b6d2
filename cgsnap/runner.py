"""Running flows: the one place that turns a flow from :mod:`cgsnap.flows`
into a TaskFlow engine with SQL persistence (a logbook per run), runs it,
resumes an interrupted one from its logbook, and prunes finished logbooks.

Everything that runs a flow comes through :func:`run_flow`: the library API
(:mod:`cgsnap.api`, which the CLI calls) and :mod:`cgsnap.recovery`.  Like
Octavia's controller worker it is the seam where a flow could be posted as a
job to a conductor instead of run in this process.  Nothing here calls up into
``api`` or the CLI; it builds flows from :mod:`cgsnap.flows` only.
"""

import threading
import uuid

from oslo_log import log as logging
from taskflow import engines, states
from taskflow import exceptions as tf_exc
from taskflow.persistence import models

from cgsnap import catalog as catalog_mod
from cgsnap import exception, lock, manifest, state
from cgsnap.flows import create as create_flows
from cgsnap.flows import delete as delete_flows

LOG = logging.getLogger(__name__)

# The flows there are to run, by name.
FLOWS = {"create": create_flows.create_flow, "delete": delete_flows.delete_flow}


def _catalog():
    return catalog_mod.Catalog(state.catalog_url())


_backends = {}
_backends_lock = threading.Lock()


def _persistence(url):
    # A pooled, WAL-mode backend: stock TaskFlow SQLite costs 7-15 ms per
    # logbook write, ~0.5 ms here (bench/RESULTS.md), and 6 writes fall
    # inside the freeze window.  One per URL and process, built under the
    # schema lock: concurrent first runs on a fresh store would otherwise
    # race the table upgrade ("table logbooks already exists").
    from cgsnap import persistence
    with _backends_lock:
        if url not in _backends:
            with lock.schema_lock():
                _backends[url] = persistence.fetch_backend(url)
        return _backends[url]


def persistence_backend():
    url = state.persistence_url()
    try:
        return _persistence(url)
    except Exception as e:
        raise exception.ConfigError(
            f"cannot open the flow store {catalog_mod.display_url(url)}: "
            f"{_hide(str(e), url)}") from None


def _hide(text, url):
    """``text`` with the password of ``url`` (as a driver may echo it) masked."""
    try:
        password = catalog_mod.sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001 - not a URL: nothing to mask
        return text
    return text.replace(str(password), "***") if password else text


_LOGBOOK_NS = uuid.UUID("6b1f3c52-4d0e-4f51-9a3c-2f9d1c7e5a10")


def logbook_uuid(book_name):
    """Each logbook's uuid is a function of its name: a lookup by name is a
    primary-key read, not a scan of every logbook."""
    return str(uuid.uuid5(_LOGBOOK_NS, book_name))


def _prune_logbook(backend, book):
    """A flow that finished successfully leaves nothing to resume: drop its logbook."""
    try:
        backend.get_connection().destroy_logbook(book.uuid)
    except Exception as e:  # noqa: BLE001 - housekeeping: never fail the operation for it
        LOG.warning("could not remove logbook %s: %s", book.name, e)


def prune_logbooks(older_than_days):
    """Remove the logbooks of failed flows older than ``older_than_days``
    (successful flows remove their own); return how many.  A logbook whose set
    is still ``creating`` or ``deleting`` is kept: recover needs it.
    ``cgsnap gc`` calls this."""
    import datetime
    conn = persistence_backend().get_connection()
    cutoff = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) \
        - datetime.timedelta(days=older_than_days)
    busy = {r.id for r in _catalog().rows() if r.status in (manifest.STATUS_CREATING,
                                                            manifest.STATUS_DELETING)}
    removed = 0
    for book in list(conn.get_logbooks(lazy=True)):
        set_id = book.name.split("-", 1)[-1][:36]
        if book.created_at is None or book.created_at >= cutoff or set_id in busy:
            continue
        conn.destroy_logbook(book.uuid)
        removed += 1
    return removed


def run_flow(flow, store, book_name, on_failure=None):
    """Run the flow named ``flow`` (a key of :data:`FLOWS`) in this process,
    with its logbook ``book_name``; return the engine.  The first task failure
    is re-raised as it was raised (a CgsnapError keeps its exit code), after
    ``on_failure(engine)`` (``on_failure(engine, revert=True)`` when the
    logbook could not be written and the engine stopped without reverting).
    A flow that succeeds removes its logbook."""
    factory = FLOWS[flow]
    backend = persistence_backend()
    book = models.LogBook(book_name, uuid=logbook_uuid(book_name))
    try:
        engine = engines.load_from_factory(factory, store=store, backend=backend, book=book,
                                           engine="serial")
    except tf_exc.StorageFailure as e:
        raise exception.ConfigError(f"cannot write the flow logbook: {_cause(e)}") from None
    try:
        engine.run()
    except tf_exc.WrappedFailure as wrapped:
        first = next(iter(wrapped))
        if on_failure:
            on_failure(engine)
        if first.exception is not None:
            raise first.exception from None
        raise exception.CgsnapError(first.exception_str) from None
    except tf_exc.StorageFailure as e:
        # The logbook could not be written (disk full, database down): the
        # engine stopped without reverting, so undo from the manifest.
        if on_failure:
            on_failure(engine, revert=True)
        raise exception.ConfigError(f"cannot write the flow logbook: {_cause(e)}") from None
    except BaseException:
        if on_failure:
            on_failure(engine)
        raise
    _prune_logbook(backend, book)
    return engine


def _cause(err):
    while getattr(err, "cause", None) is not None or err.__cause__ is not None:
        err = getattr(err, "cause", None) or err.__cause__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def run_delete_flow(set_id):
    """Run the delete flow; the caller holds the instance lock."""
    run_flow("delete", {"set_id": set_id}, f"delete-{set_id}-{uuid.uuid4().hex[:8]}")


def create_flow_detail(set_id):
    """The logbook entry of the create flow that made ``set_id``, if any."""
    name = f"create-{set_id}"
    try:
        book = persistence_backend().get_connection().get_logbook(logbook_uuid(name))
    except tf_exc.NotFound:
        return None
    if book.name != name:
        return None
    for detail in book:
        return detail
    return None


def completable(set_id):
    """An interrupted create can be completed only if its thaw already
    succeeded with the guard disarmed: every member's point in time was then
    taken inside a freeze that did not lapse."""
    detail = create_flow_detail(set_id)
    if detail is None:
        return None
    atoms = {ad.name: ad for ad in detail}
    thaw = atoms.get("ThawGuest")
    if thaw is None or thaw.state != states.SUCCESS or not isinstance(thaw.results, dict):
        return None
    return detail if thaw.results.get("guard") != "fired" else None


def resume_create(detail, set_id=None):
    """Run the rest of an interrupted create from its logbook (TaskFlow
    re-runs the atom that was running; the remaining atoms are idempotent);
    on success the logbook of ``set_id``'s create is removed."""
    backend = persistence_backend()
    engine = engines.load_from_detail(detail, backend=backend, engine="serial")
    try:
        engine.run()
    except tf_exc.WrappedFailure as wrapped:
        first = next(iter(wrapped))
        raise (first.exception or exception.CgsnapError(first.exception_str)) from None
    if set_id:
        _prune_logbook(backend, models.LogBook(f"create-{set_id}",
                                               uuid=logbook_uuid(f"create-{set_id}")))
