"""``cgsnap verify``: do yesterday's sets still exist?

For each set: the manifest's checksum and schema; for an ``available`` set,
every member where the manifest says it is, as it was recorded:

* a Cinder snapshot exists, carries the set's id, and is ``available``;
* a Glance image exists and is ``active``;
* a local copy exists (and has the size recorded, where one was);
* a memory image exists with the recorded size and sha256.

Sets in another status are reported as not checked.  Nothing is changed:
verify reads the catalog, lists each backend once per set and reads files.
"""

import hashlib
import os

from cgsnap import drivers as drivers_mod
from cgsnap import exception, manifest

OK, BROKEN, NOT_CHECKED = "ok", "broken", "not checked"


def verify(cat, set_ids=None):
    """``[{"id", "instance_id", "status", "result", "problems"}]`` for the
    sets ``set_ids`` (ids or unique prefixes), or every set of the catalog."""
    if set_ids:
        targets = []
        for ref in set_ids:
            try:
                targets.append((cat.find(ref), None))
            except exception.IntegrityError as e:
                targets.append(({"id": ref}, str(e)))
    else:
        targets = [(row.doc or {"id": row.id, "instance_id": row.instance_id,
                                "status": row.status}, row.error) for row in cat.rows()]
    return [_verify_one(doc, error) for doc, error in targets]


def _verify_one(doc, manifest_error):
    row = {"id": doc["id"], "instance_id": doc.get("instance_id"), "status": doc.get("status"),
           "result": OK, "problems": []}
    if manifest_error:
        row.update(result=BROKEN, problems=[f"manifest: {manifest_error}"])
        return row
    if doc["status"] != manifest.STATUS_AVAILABLE:
        row["result"] = NOT_CHECKED
        return row
    problems = row["problems"]
    kinds = {m["kind"] for m in doc["members"]}
    drv = drivers_mod.get()
    if manifest.KIND_CINDER_SNAPSHOT in kinds:
        problems += _listed(doc, manifest.KIND_CINDER_SNAPSHOT, "snapshot_id", "available",
                            lambda: drv.volumes.list_snapshots(doc["id"]), "Cinder snapshot")
    if manifest.KIND_GLANCE_IMAGE in kinds:
        problems += _listed(doc, manifest.KIND_GLANCE_IMAGE, "image_id", "active",
                            lambda: drv.images.list_images(doc["id"]), "Glance image")
    for m in doc["members"]:
        if m["kind"] == manifest.KIND_LOCAL_QCOW2:
            problems += _file(f"{m['device']}: local copy", m.get("path"), m.get("size_bytes"),
                              m.get("sha256"))
    if doc.get("memory"):
        mem = doc["memory"]
        problems += _file("memory image", mem.get("path"), mem.get("size_bytes"),
                          mem.get("sha256"))
    if problems:
        row["result"] = BROKEN
    return row


def _listed(doc, kind, id_key, good_status, list_fn, what):
    try:
        found = {x["id"]: x for x in list_fn()}
    except exception.CgsnapError as e:
        return [f"cannot list the {what}s: {e}"]
    out = []
    for m in doc["members"]:
        if m["kind"] != kind:
            continue
        x = found.get(m.get(id_key))
        if x is None:
            out.append(f"{m['device']}: {what} {m.get(id_key)} is gone")
        elif x["status"] != good_status:
            out.append(f"{m['device']}: {what} {x['id']} is {x['status']}")
    return out


def _file(what, path, size, sha256):
    if not path or not os.path.isfile(path):
        return [f"{what} {path} is gone"]
    if size is not None and os.path.getsize(path) != size:
        return [f"{what} {path} has {os.path.getsize(path)} bytes, {size} were recorded"]
    if sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return [f"{what} {path}: sha256 differs from the one recorded"]
    return []
