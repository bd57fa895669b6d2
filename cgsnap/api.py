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
from cgsnap import exception, guard, hooks, lock, manifest, naming, recovery, runner, state
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
                        idempotency_key=None, memory=False, allow_shared_volumes=False,
                        labels=None, lock_wait=None):
    """Take one instance-level snapshot set; return its manifest.

    Raises a :class:`~cgsnap.exception.CgsnapError` (with its exit code) on
    failure, after the flow reverted: guest thawed, members deleted, manifest
    ``failed``.  :class:`~cgsnap.exception.CleanupIncomplete` means the revert
    could not remove everything; the message names what is left.
    ``lock_wait``: seconds to wait for another operation on the instance
    (default ``[DEFAULT] lock_wait``), then :class:`~cgsnap.exception.Locked`.
    """
    labels = check_labels(labels)
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
                       labels=labels or None,
                       freeze_timeout=timeout or CONF.libvirt.freeze_timeout,
                       local_disks=CONF.snapshot.local_disks,
                       wait_timeout=CONF.snapshot.wait_timeout)
    cat = catalog()
    with lock.instance_lock(instance["id"], "create",
                            CONF.lock_wait if lock_wait is None else lock_wait):
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
        refused = hooks.pre_create(set_id, instance, labels)
        if refused:  # before anything is recorded: nothing to undo
            hooks.post_create(set_id, instance, labels, "refused",
                              exit_code=exception.EXIT_REFUSED, error=refused)
            raise exception.Refused(f"{refused}; nothing was frozen or recorded")
        try:
            doc = _create(cat, drv, instance, set_id, options, idempotency_key)
        except BaseException as e:  # the post-hook runs after every create
            error = str(e) if isinstance(e, exception.CgsnapError) else \
                f"{type(e).__name__}: {e}"
            _post_hook_after_failure(cat, set_id, instance, labels,
                                     getattr(e, "exit_code", exception.EXIT_ERROR), error)
            raise
        if doc["id"] == set_id:  # (not a set an idempotent retry found)
            hooks.post_create(set_id, instance, labels, doc["status"], doc.get("consistency"))
        return doc


def _post_hook_after_failure(cat, set_id, instance, labels, exit_code, error):
    try:
        status = cat.get(set_id)["status"]
    except exception.CgsnapError:
        status = "refused"  # nothing was recorded
    hooks.post_create(set_id, instance, labels, status, exit_code=exit_code, error=error)


def _create(cat, drv, instance, set_id, options, idempotency_key):
    """The create flow for ``set_id`` (the instance lock held)."""
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


def check_labels(labels):
    """``labels`` ({key: value}) as a manifest stores them; refuses bad ones
    before anything happens."""
    import re
    out = {}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not re.fullmatch(manifest.LABEL_KEY_RE, key):
            raise exception.Refused(f"label key {key!r}: 1-63 letters, digits, '_', '.', '-', "
                                    "starting with a letter or digit")
        if not isinstance(value, str) or len(value) > 255 or not value.isprintable():
            raise exception.Refused(f"label {key}: the value must be printable, at most 255 "
                                    "characters")
        out[key] = value
    return out


def delete_snapshot_set(set_id_or_prefix, force=False):
    """Delete every member of a set, then its manifest.  A protected set is
    refused unless ``force`` (which never overrides the check that a file is
    in use)."""
    cat = catalog()
    doc = cat.find(set_id_or_prefix)
    if doc.get("protected") and not force:
        raise exception.Refused(f"set {doc['id']} is protected: run 'cgsnap unprotect "
                                f"{doc['id'][:8]}' first, or delete it with --force")
    with lock.instance_lock(doc["instance_id"], "delete", CONF.lock_wait):
        runner.run_delete_flow(doc["id"])
    return doc


def protect_snapshot_set(set_id_or_prefix, protected=True):
    """Mark a set protected (never pruned, deleted only with --force), or not."""
    cat = catalog()
    doc = cat.find(set_id_or_prefix)
    with lock.instance_lock(doc["instance_id"], "protect", CONF.lock_wait):
        doc = manifest.current(cat.get(doc["id"]))
        if doc["status"] in (manifest.STATUS_DELETING, manifest.STATUS_ERROR_DELETING) \
                and protected:
            raise exception.Refused(f"set {doc['id']} is {doc['status']}: it cannot be "
                                    "protected")
        doc["protected"] = bool(protected)
        return cat.save(doc)


def prune(policy, instance_ref=None, dry_run=False, now=None):
    """Apply a retention policy (:func:`cgsnap.retention.plan`) to the sets of
    this catalog (of one instance, or all), newest first per instance; delete
    what it removes through the delete flow, going on past a failure.  Returns
    one row per set: ``{"id", "instance_id", "created_at", "status", "keep",
    "reason", "result"}``, where ``result`` is ``kept``, ``deleted``,
    ``would delete`` (dry run), ``busy`` (a member has volumes made from it:
    kept, not a failure) or ``failed: <why>``."""
    import datetime

    from cgsnap import retention
    instance_id = _instance_id(instance_ref)
    docs = catalog().list(instance_id=instance_id, corrupt=True)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        decisions = retention.plan(docs, policy, now)
    except ValueError as e:
        raise exception.Refused(str(e)) from None
    by_id = {d["id"]: d for d in docs}
    busy = _busy_snapshots(docs, decisions) if not dry_run else set()
    rows = []
    for set_id, keep, reason in decisions:
        doc = by_id[set_id]
        row = {"id": set_id, "instance_id": doc.get("instance_id"),
               "created_at": doc.get("created_at"), "status": doc.get("status"),
               "keep": keep, "reason": reason, "result": "kept"}
        if not keep:
            if dry_run:
                row["result"] = "would delete"
            elif any(m.get("snapshot_id") in busy for m in doc.get("members", [])):
                row.update(keep=True, reason="busy", result="busy")
            else:
                try:
                    delete_snapshot_set(set_id)
                    row["result"] = "deleted"
                except exception.CgsnapError as e:
                    row["result"] = f"failed: {e}"
        rows.append(row)
    return rows


def _busy_snapshots(docs, decisions):
    """Snapshot ids, among the sets the plan removes, that have volumes made
    from them (Cinder refuses to delete those)."""
    removed = {sid for sid, keep, _ in decisions if not keep}
    if not any(m.get("kind") == manifest.KIND_CINDER_SNAPSHOT
               for d in docs if d["id"] in removed for m in d.get("members", [])):
        return set()
    try:
        return set(drivers_mod.get().volumes.volumes_by_source_snapshot())
    except (exception.CgsnapError, AttributeError) as e:
        LOG.warning("prune: cannot tell which snapshots have dependent volumes: %s", e)
        return set()


def _instance_id(instance_ref):
    """The UUID of ``instance_ref`` (a UUID is taken as it is: the instance may be gone)."""
    if not instance_ref:
        return None
    from cgsnap.drivers.libvirt_driver import is_uuid
    return instance_ref if is_uuid(instance_ref) else \
        drivers_mod.get().hypervisor.get_instance(instance_ref)["id"]


def recover(instance_ref=None):
    return recovery.recover(_instance_id(instance_ref))


def list_snapshot_sets(instance_ref=None, status=None):
    return catalog().list(instance_id=_instance_id(instance_ref), status=status, corrupt=True)


def verify_snapshot_sets(set_ids=None):
    """:func:`cgsnap.verify.verify` on this catalog: the sets named, or all."""
    from cgsnap import verify
    return verify.verify(catalog(), set_ids)


def show_snapshot_set(set_id_or_prefix):
    return catalog().find(set_id_or_prefix)

