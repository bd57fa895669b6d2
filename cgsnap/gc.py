"""``cgsnap gc``: collect members that belong to no live snapshot set.

Candidates are Cinder snapshots and Glance images carrying cgsnap metadata
(``cgsnap_set_id``), Cinder group snapshots whose description names a cgsnap
set, and set directories under ``local_dir`` (named by a set id, and never one a
guest still runs on: :mod:`cgsnap.diskuse`).  One is
collected when its set is not ``available`` / ``creating`` / ``deleting`` in
the catalog (it failed and its revert could not finish, or it was made out of
band) and it is older than the grace period.  A snapshot that a volume was
created from is reported as busy, never forced.  Only things cgsnap tagged
are ever considered.

Only this catalog's members are candidates, unless ``any_catalog``: every
member carries the id of the catalog that made it (``cgsnap_catalog_id``), and
after a live migration another host's catalog owns the instance's older sets.
Members made before catalog ids existed carry none; one of those is a
candidate only if its set is recorded in this catalog (a failed set), because
its instance id cannot tell two hosts' catalogs apart; otherwise it is kept
and reported, and ``--any-catalog`` collects it.  Members of a set whose
manifest does not verify are never collected.
"""

import datetime
import os

from cgsnap import drivers as drivers_mod
from cgsnap import exception, manifest, naming, state
from cgsnap.catalog import Catalog

LIVE = (manifest.STATUS_AVAILABLE, manifest.STATUS_CREATING, manifest.STATUS_DELETING)


def _age_s(created_at):
    if not created_at:
        return float("inf")
    when = datetime.datetime.fromisoformat(str(created_at).rstrip("Z"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()


def _skip_absent_backends(drv, volumes, images, notes):
    """Leave out the backends this host does not have; one note per reason."""
    skipped = {}
    if volumes:
        why = drivers_mod.unavailable("volumes", drv)
        if why:
            volumes = False
            skipped.setdefault(why, []).append("Cinder")
    if images:
        why = drivers_mod.unavailable("images", drv)
        if why:
            images = False
            skipped.setdefault(why, []).append("Glance")
    for why, names in skipped.items():
        notes.append(f"gc skipped {' and '.join(names)}: {why}")
    return volumes, images


def collect(dry_run=False, grace_s=3600.0, volumes=True, images=True, any_instance=False,
            any_catalog=False, notes=None):
    """Return one row per candidate: kind, id, name, set_id, action, reason.

    Only members of this catalog are candidates, unless ``any_catalog`` (see
    the module docstring); ``any_instance`` is its older name.

    A backend this host does not have (no OpenStack credentials configured,
    or a cloud without an image service) is skipped; ``notes`` (a list) gets
    one line saying which and why.
    """
    cat = Catalog(state.catalog_url())
    catalog_rows = cat.rows()
    # A corrupt manifest's set counts as live: its members may be valid.
    live = {r.id for r in catalog_rows if r.doc is None or r.status in LIVE}
    known_sets = {r.id for r in catalog_rows}
    known_instances = {r.instance_id for r in catalog_rows}
    this_catalog = cat.catalog_id
    any_catalog = any_catalog or any_instance
    drv = drivers_mod.get()
    rows = []
    volumes, images = _skip_absent_backends(drv, volumes, images,
                                            notes if notes is not None else [])

    def consider(kind, item, delete, dependents=()):
        set_id = item["metadata"].get(naming.META_SET_ID)
        row = {"kind": kind, "id": item["id"], "name": item.get("name"), "set_id": set_id}
        if set_id in live:
            return
        if not any_catalog and not _ours(item["metadata"], this_catalog, known_sets,
                                         known_instances, rows, row):
            return
        if _age_s(item.get("created_at")) < grace_s:
            rows.append(dict(row, action="kept", reason="younger than the grace period"))
            return
        if item.get("status") == "creating" and kind == "cinder-snapshot":
            from cgsnap.cleanup import admin_reset_command
            rows.append(dict(row, action="stuck", reason=(
                "stuck in 'creating' past the grace period (cinder-api probably died "
                "mid-request); a member user cannot delete it: an admin must run "
                f"'{admin_reset_command(item['id'])}', then run gc again")))
            return
        if dependents:
            rows.append(dict(row, action="busy", reason="volumes were created from it: "
                             + ", ".join(dependents)))
            return
        if dry_run:
            rows.append(dict(row, action="would-delete", reason="no live set"))
            return
        try:
            delete(item["id"])
            rows.append(dict(row, action="deleted", reason="no live set"))
        except exception.CgsnapError as e:
            rows.append(dict(row, action="failed", reason=str(e)))

    # Images first: nothing in Cinder depends on them.  Then snapshots.
    if images:
        for img in drv.images.list_all_cgsnap_images():
            consider("glance-image", img, drv.images.delete_image)
    if volumes:
        snaps = drv.volumes.list_all_cgsnap_snapshots()
        clones = drv.volumes.volumes_by_source_snapshot() if snaps else {}
        # A group snapshot's members go with it; they cannot be deleted alone.
        if drv.volumes.supports_groups():
            for gs in drv.volumes.list_group_snapshots():
                members = [s["id"] for s in snaps if s.get("group_snapshot_id") == gs["id"]]
                consider("cinder-group-snapshot", gs, drv.volumes.delete_group_snapshot,
                         [v for m in members for v in clones.get(m, ())])
        for snap in snaps:
            if snap.get("group_snapshot_id"):
                continue
            consider("cinder-snapshot", snap, drv.volumes.delete_snapshot,
                     clones.get(snap["id"], ()))
    _collect_local_dirs(consider)
    return rows


def _collect_local_dirs(consider):
    """Set directories under ``local_dir``: only directories named by a set id
    (anything else there is not cgsnap's), and never one a guest still uses
    (:mod:`cgsnap.diskuse`)."""
    from cgsnap import diskuse
    from cgsnap.drivers.libvirt_driver import is_uuid
    from cgsnap.tasks import local
    root = os.path.dirname(local.set_dir("x"))
    if not os.path.isdir(root):
        return
    users = []

    def _delete(path):
        if not users:  # list the domains once, on the first delete
            users.append(diskuse.disk_users())
        diskuse.remove_tree(path, users[0])

    for set_id in sorted(os.listdir(root)):
        path = os.path.join(root, set_id)
        if not is_uuid(set_id) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            mtime = os.path.getmtime(path)
        except FileNotFoundError:
            continue  # removed meanwhile (a delete or revert)
        item = {"id": path, "name": set_id, "metadata": {naming.META_SET_ID: set_id},
                "created_at": datetime.datetime.fromtimestamp(
                    mtime, datetime.timezone.utc).isoformat()}
        consider("local-dir", item, _delete)


def _ours(meta, this_catalog, known_sets, known_instances, rows, row):
    """Whether a member belongs to this catalog (see the module docstring)."""
    owner_catalog = meta.get(naming.META_CATALOG_ID)
    if owner_catalog is not None:
        return owner_catalog == this_catalog
    owner = meta.get(naming.META_INSTANCE_ID)
    if owner is None or meta.get(naming.META_SET_ID) in known_sets:
        return True  # a local directory of this host, or a set this catalog recorded
    if owner in known_instances:
        rows.append(dict(row, action="kept", reason=(
            "no cgsnap_catalog_id (a group snapshot, or made before catalog ids) and its "
            "set is not in this catalog: it may be another host's set after a live "
            "migration; --any-catalog collects it")))
    return False
