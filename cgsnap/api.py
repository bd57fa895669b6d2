"""The library API: create, delete, list, show and recover snapshot sets
(what the CLI calls).  Each operation runs one flow through
:func:`cgsnap.runner.run_flow`, under the instance's lock; around the create
flow it keeps the last lines of defence (thaw again, verify that nothing of a
failed set is left).
"""

import os

from oslo_log import log as logging
from taskflow import states

from cgsnap import catalog as catalog_mod
from cgsnap import drivers as drivers_mod
from cgsnap import exception, guard, lock, manifest, naming, recovery, runner, state
from cgsnap.conf import CONF

LOG = logging.getLogger(__name__)


def catalog():
    return catalog_mod.Catalog(state.catalog_url())


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
        # A create that died earlier on this instance (on this host) is
        # reverted first; another host's set, or a corrupt one, is left alone.
        for row in cat.rows(instance_id=instance["id"], status=manifest.STATUS_CREATING):
            if row.doc is not None and recovery.owned_here(row):
                LOG.warning("recovering interrupted set %s first", row.id)
                recovery.recover_locked(cat, row.id)
        if idempotency_key:
            existing = _live_set_for_key(cat, instance["id"], idempotency_key)
            if existing:
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
            runner.run_flow("create", store, f"create-{set_id}", _after_failure)
        except catalog_mod.DuplicateSet:
            # Another host (or a process that does not share our lock) recorded
            # a live set for this key first: this call made nothing.
            existing = _live_set_for_key(cat, instance["id"], idempotency_key)
            if existing:
                return existing
            raise
        except exception.CgsnapError:
            if any(side_effects):  # a pre-check failure created nothing: no need to look
                _verify_nothing_left(drv, cat, set_id)
            raise
        except KeyboardInterrupt:
            _verify_nothing_left(drv, cat, set_id)
            raise exception.Interrupted(f"interrupted; set {set_id} was reverted") from None
        return cat.get(set_id)


def _live_set_for_key(cat, instance_id, key):
    """The available set for ``key``; ``None`` if there is no live one.  A set
    still ``creating`` (made by another host, ours were recovered) is busy."""
    existing = cat.by_idempotency_key(instance_id, key)
    if existing is None or existing["status"] == manifest.STATUS_AVAILABLE:
        return existing
    raise exception.Locked(
        f"set {existing['id']} with idempotency key {key!r} is still being created "
        "(by another host or process); try again later")


def _revert_from_manifest(cat, set_id):
    """Undo a create whose engine stopped without its reverts."""
    try:
        doc = cat.get(set_id, verify=False)
    except exception.CgsnapError:
        return
    problems = recovery.revert_members(doc)
    try:  # mark(): a manifest that does not verify is not re-sealed
        cat.mark(set_id, manifest.STATUS_FAILED, cleanup_pending=bool(problems),
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
        runner.run_delete_flow(doc["id"])
    return doc


def recover(instance_ref=None):
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
    return catalog().list(instance_id=instance_id, status=status, corrupt=True)


def show_snapshot_set(set_id_or_prefix):
    return catalog().find(set_id_or_prefix)

