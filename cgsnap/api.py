"""The library API: create and delete snapshot sets (what the CLI and, later,
the REST service call).  Each call runs one flow from :mod:`cgsnap.flows` in a
TaskFlow engine with SQL persistence, under the instance's lock.
"""

import os
import threading
import uuid

from oslo_log import log as logging
from taskflow import engines, states
from taskflow import exceptions as tf_exc
from taskflow.persistence import models

from cgsnap import catalog as catalog_mod
from cgsnap import drivers as drivers_mod
from cgsnap import exception, guard, lock, manifest, naming, state
from cgsnap.conf import CONF
from cgsnap.flows import create as create_flows
from cgsnap.flows import delete as delete_flows

LOG = logging.getLogger(__name__)


def catalog():
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
        raise exception.ConfigError(f"cannot open the flow store {url}: {e}") from None


def _run(factory, store, book_name, on_failure=None):
    """Run ``factory()`` with persistence; re-raise the first task failure as
    it was raised (a CgsnapError keeps its exit code)."""
    backend = persistence_backend()
    book = models.LogBook(book_name)
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
    return engine


def _cause(err):
    while getattr(err, "cause", None) is not None or err.__cause__ is not None:
        err = getattr(err, "cause", None) or err.__cause__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _options(**kwargs):
    opts = {k: v for k, v in kwargs.items() if v is not None}
    opts["exclude_volumes"] = sorted(set(opts.get("exclude_volumes") or ()))
    return opts


def create_snapshot_set(instance_ref, name=None, all_volumes=True, exclude_volumes=(),
                        exclude_root=False, allow_crash_consistent=None, timeout=None,
                        idempotency_key=None, memory=False, allow_shared_volumes=False):
    """Take one instance-level snapshot set; return its manifest.

    Raises a :class:`~cgsnap.exception.CgsnapError` (with its exit code) on
    failure, after the flow reverted: guest thawed, members deleted, manifest
    ``failed``.  :class:`~cgsnap.exception.CleanupIncomplete` means the revert
    could not remove everything; the message names what is left.
    """
    drv = drivers_mod.get()
    instance = drv.hypervisor.get_instance(instance_ref)
    if name is not None:
        clean = naming.sanitize_set_name(name)
        if clean is None:
            raise exception.Refused("--name has no printable characters")
        name = clean
    if allow_crash_consistent is None:
        allow_crash_consistent = CONF.snapshot.allow_crash_consistent
    options = _options(name=name, all_volumes=bool(all_volumes),
                       exclude_volumes=list(exclude_volumes or ()),
                       exclude_root=bool(exclude_root),
                       allow_crash_consistent=bool(allow_crash_consistent),
                       idempotency_key=idempotency_key, memory=bool(memory),
                       allow_shared_volumes=bool(allow_shared_volumes) or None,
                       freeze_timeout=timeout or CONF.libvirt.freeze_timeout,
                       local_disks=CONF.snapshot.local_disks,
                       wait_timeout=CONF.snapshot.wait_timeout)
    cat = catalog()
    with lock.instance_lock(instance["id"], "create", CONF.lock_wait):
        # A create that died earlier on this instance is reverted first.
        from cgsnap import recovery
        for doc in cat.list(instance_id=instance["id"], status=manifest.STATUS_CREATING):
            LOG.warning("recovering interrupted set %s first", doc["id"])
            recovery.recover_locked(cat, doc["id"])
        if idempotency_key:
            existing = cat.by_idempotency_key(instance["id"], idempotency_key)
            if existing and existing["status"] == manifest.STATUS_AVAILABLE:
                return existing
        set_id = naming.new_set_id()
        store = {"instance_ref": instance["id"], "set_id": set_id, "options": options}

        side_effects = []

        def _after_failure(engine, revert=False):
            side_effects.append(_reached_side_effects(engine))
            _ensure_thawed(engine, drv, instance)
            guard.stop(set_id)
            if revert:
                _revert_from_manifest(cat, set_id)

        try:
            _run(create_flows.create_flow, store, f"create-{set_id}", _after_failure)
        except exception.CgsnapError:
            if any(side_effects):  # a pre-check failure created nothing: no need to look
                _verify_nothing_left(drv, cat, set_id)
            raise
        except KeyboardInterrupt:
            _verify_nothing_left(drv, cat, set_id)
            raise exception.Interrupted(f"interrupted; set {set_id} was reverted") from None
        return cat.get(set_id)


def _revert_from_manifest(cat, set_id):
    """Undo a create whose engine stopped without its reverts."""
    from cgsnap import recovery
    try:
        doc = cat.get(set_id, verify=False)
    except exception.CgsnapError:
        return
    problems = recovery.revert_members(doc)
    try:
        cat.update(set_id, status=manifest.STATUS_FAILED, cleanup_pending=bool(problems),
                   status_reason="the flow logbook could not be written; reverted")
    except exception.CgsnapError as e:
        LOG.error("could not mark set %s failed: %s", set_id, e)


_CREATING_ATOMS = ("SnapshotLocalDisks", "SnapshotVolumes", "UploadRootImage")


def _reached_side_effects(engine):
    """Whether the failed flow got as far as creating members."""
    for name in _CREATING_ATOMS:
        try:
            if engine.storage.get_atom_state(name) not in (None, states.PENDING):
                return True
        except Exception:  # noqa: BLE001 - unknown: assume it did
            return True
    return False


def _ensure_thawed(engine, drv, instance):
    """Second line of defence: if the freeze (or the ``--memory`` pause) may
    have happened, thaw (and resume) again.

    FreezeGuest.revert already does; this covers an engine stopped by an
    exception that bypassed the reverts (KeyboardInterrupt, a bug)."""
    try:
        atom_state = engine.storage.get_atom_state("FreezeGuest")
    except Exception:
        atom_state = None
    if atom_state in (None, states.PENDING):
        return
    try:
        n = drv.hypervisor.thaw(instance["id"])
        if n:
            LOG.warning("safety net thawed %d filesystems of %s", n, instance["name"])
    except Exception as e:
        LOG.error("safety net could not thaw %s: %s", instance["name"], e)
    try:  # --memory pauses instead: resume (a no-op unless the guest is paused)
        memory = engine.storage.fetch("options").get("memory")
    except Exception:  # noqa: BLE001 - unknown: assume it may have paused
        memory = True
    if memory:
        try:
            if drv.hypervisor.resume(instance["id"]):
                LOG.warning("safety net resumed %s", instance["name"])
        except Exception as e:
            LOG.error("safety net could not resume %s: %s", instance["name"], e)


def _verify_nothing_left(drv, cat, set_id):
    """After a failed create, prove that no member of the set survived; if
    something did, flag the set so that ``cgsnap recover`` retries."""
    try:
        doc = cat.get(set_id, verify=False)
    except exception.NotFound:
        return  # failed before anything was recorded: nothing was created
    try:
        _check_members_gone(drv, doc)
    except exception.CleanupIncomplete:
        try:
            cat.update(set_id, cleanup_pending=True)
        except exception.CgsnapError as e:
            LOG.error("could not flag set %s for recovery: %s", set_id, e)
        raise


def _check_members_gone(drv, doc):
    set_id = doc["id"]
    if any(m["kind"] in (manifest.KIND_LOCAL_QCOW2, manifest.KIND_GLANCE_IMAGE)
           for m in doc["members"]):
        from cgsnap.tasks import local
        if os.path.isdir(local.set_dir(set_id)) and os.listdir(local.set_dir(set_id)):
            raise exception.CleanupIncomplete(
                f"set {set_id} failed and files remain in {local.set_dir(set_id)}")
    kinds = {m["kind"] for m in doc["members"]}
    if manifest.KIND_GLANCE_IMAGE in kinds:
        _none_left(set_id, "Glance image(s)", lambda: drv.images.list_images(set_id))
    if manifest.KIND_CINDER_SNAPSHOT in kinds:
        if drv.volumes.supports_groups():  # its members carry no metadata until tagged
            _none_left(set_id, "Cinder group snapshot(s)",
                       lambda: drv.volumes.list_group_snapshots(set_id))
        _none_left(set_id, "Cinder snapshot(s)", lambda: drv.volumes.list_snapshots(set_id))


def _none_left(set_id, what, list_members):
    try:
        left = list_members()
    except exception.CgsnapError as e:
        raise exception.CleanupIncomplete(
            f"could not verify the cleanup of set {set_id}: {e}") from None
    if left:
        raise exception.CleanupIncomplete(
            f"set {set_id} failed and {len(left)} {what} could not be deleted: "
            + ", ".join(x["id"] for x in left) + " (run 'cgsnap recover' when the service is back)")


def delete_snapshot_set(set_id_or_prefix):
    """Delete every member of a set, then its manifest."""
    cat = catalog()
    doc = cat.find(set_id_or_prefix)
    with lock.instance_lock(doc["instance_id"], "delete", CONF.lock_wait):
        run_delete_flow(doc["id"])
    return doc


def run_delete_flow(set_id):
    """Run the delete flow; the caller holds the instance lock."""
    _run(delete_flows.delete_flow, {"set_id": set_id}, f"delete-{set_id}-{uuid.uuid4().hex[:8]}")


def _create_flow_detail(set_id):
    """The logbook entry of the create flow that made ``set_id``, if any."""
    backend = persistence_backend()
    for book in backend.get_connection().get_logbooks():
        if book.name == f"create-{set_id}":
            for detail in book:
                return detail
    return None


def completable(set_id):
    """An interrupted create can be completed only if its thaw already
    succeeded with the guard disarmed: every member's point in time was then
    taken inside a freeze that did not lapse."""
    detail = _create_flow_detail(set_id)
    if detail is None:
        return None
    atoms = {ad.name: ad for ad in detail}
    thaw = atoms.get("ThawGuest")
    if thaw is None or thaw.state != states.SUCCESS or not isinstance(thaw.results, dict):
        return None
    return detail if thaw.results.get("guard") != "fired" else None


def resume_create(detail):
    """Run the rest of an interrupted create from its logbook (TaskFlow
    re-runs the atom that was running; the remaining atoms are idempotent)."""
    engine = engines.load_from_detail(detail, backend=persistence_backend(), engine="serial")
    try:
        engine.run()
    except tf_exc.WrappedFailure as wrapped:
        first = next(iter(wrapped))
        raise (first.exception or exception.CgsnapError(first.exception_str)) from None


def recover(instance_ref=None):
    from cgsnap import recovery
    instance_id = None
    if instance_ref:
        from cgsnap.drivers.libvirt_driver import is_uuid
        instance_id = instance_ref if is_uuid(instance_ref) else \
            drivers_mod.get().hypervisor.get_instance(instance_ref)["id"]
    return recovery.recover(instance_id)


def list_snapshot_sets(instance_ref=None, status=None):
    instance_id = None
    if instance_ref:
        from cgsnap.drivers.libvirt_driver import is_uuid
        instance_id = instance_ref if is_uuid(instance_ref) else \
            drivers_mod.get().hypervisor.get_instance(instance_ref)["id"]
    return catalog().list(instance_id=instance_id, status=status)


def show_snapshot_set(set_id_or_prefix):
    return catalog().find(set_id_or_prefix)
