"""``cgsnap gc``: collect members that belong to no live snapshot set.

Candidates are Cinder snapshots and Glance images carrying cgsnap metadata
(``cgsnap_set_id``), Cinder group snapshots whose description names a cgsnap
set, and set directories under ``local_dir``.  One is
collected when its set is not ``available`` / ``creating`` / ``deleting`` in
the catalog (it failed and its revert could not finish, or it was made out of
band) and it is older than the grace period.  A snapshot that a volume was
created from is reported as busy, never forced.  Only things cgsnap tagged
are ever considered.
"""

import datetime
import os
import shutil

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
            notes=None):
    """Return one row per candidate: kind, id, name, set_id, action, reason.

    Only members of instances this catalog knows are candidates, unless
    ``any_instance``: another catalog (another host, the demo) may own the rest.

    A backend this host does not have (no OpenStack credentials configured,
    or a cloud without an image service) is skipped; ``notes`` (a list) gets
    one line saying which and why.
    """
    cat = Catalog(state.catalog_url())
    docs = cat.list()
    live = {d["id"] for d in docs if d["status"] in LIVE}
    known_instances = {d["instance_id"] for d in docs}
    drv = drivers_mod.get()
    rows = []
    volumes, images = _skip_absent_backends(drv, volumes, images,
                                            notes if notes is not None else [])

    def consider(kind, item, delete, dependents=()):
        set_id = item["metadata"].get(naming.META_SET_ID)
        row = {"kind": kind, "id": item["id"], "name": item.get("name"), "set_id": set_id}
        if set_id in live:
            return
        owner = item["metadata"].get(naming.META_INSTANCE_ID)
        if not any_instance and owner is not None and owner not in known_instances:
            return
        if _age_s(item.get("created_at")) < grace_s:
            rows.append(dict(row, action="kept", reason="younger than the grace period"))
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
    from cgsnap.tasks import local
    root = os.path.dirname(local.set_dir("x"))
    if os.path.isdir(root):
        for set_id in sorted(os.listdir(root)):
            path = os.path.join(root, set_id)
            item = {"id": path, "name": set_id, "metadata": {naming.META_SET_ID: set_id},
                    "created_at": datetime.datetime.fromtimestamp(
                        os.path.getmtime(path), datetime.timezone.utc).isoformat()}
            consider("local-dir", item, lambda p: shutil.rmtree(p))
    return rows
