"""The documented fake storage backends, for unit tests and benchmarks.

:class:`FakeVolumeBackend` (Cinder's interface) and :class:`FakeImageBackend`
(Glance's) keep everything in this process; nothing configures them: tests
and benchmarks install them with :func:`cgsnap.drivers.override`.  They have
nothing to do with ``cgsnap create --memory`` (the guest's RAM image).

The volume fake models Cinder closely enough for the flow: snapshots start
``creating`` and become ``available`` after ``latency`` seconds (± ``jitter``),
a concurrency cap can serialise creates like a busy API, quotas are enforced,
and any volume can be put in an arbitrary status.  It is never the only proof
a feature works: the functional tier runs the same flows on real Cinder.
"""

import random
import threading
import time
import uuid

from cgsnap import exception, faults, naming
from cgsnap.drivers import base


class FakeVolumeBackend(base.VolumeBackend):
    """Volumes, snapshots, groups and group snapshots in dicts."""

    def __init__(self, latency=0.0, jitter=0.0, max_concurrency=None, seed=0,
                 snapshot_quota=-1, gigabytes_quota=-1, create_cost=0.0):
        self.latency = latency
        self.jitter = jitter
        self.create_cost = create_cost
        self.snapshot_quota = snapshot_quota
        self.gigabytes_quota = gigabytes_quota
        self._rand = random.Random(seed)
        self._sem = threading.Semaphore(max_concurrency) if max_concurrency else None
        self._lock = threading.Lock()
        self.volumes = {}
        self.snapshots = {}
        self.calls = {"create": 0, "list": 0, "get": 0, "delete": 0}
        self.fail_volume_ids = set()   # creates for these go to 'error'
        self.groups = {}
        self.group_snapshots = {}

    # -- test helpers ---------------------------------------------------------
    def add_volume(self, volume_id=None, size_gb=1, status="in-use", attached_to=(),
                   name=None):
        vid = volume_id or str(uuid.uuid4())
        self.volumes[vid] = {"id": vid, "name": name or f"vol-{vid[:8]}", "status": status,
                             "size_gb": size_gb, "attached_to": list(attached_to),
                             "group_id": None}
        return vid

    def add_group(self, volume_ids, consistent=True, type_name="consistent", status="available"):
        """Put volumes in a new group; ``consistent=None`` hides the type's specs."""
        gid = str(uuid.uuid4())
        self.groups[gid] = {"id": gid, "status": status, "group_type_id": str(uuid.uuid4()),
                            "group_type_name": type_name, "consistent": consistent,
                            "volume_ids": list(volume_ids)}
        for vid in volume_ids:
            self.volumes[vid]["group_id"] = gid
        return gid

    def _ready_at(self):
        return time.monotonic() + max(0.0, self.latency + self._rand.uniform(
            -self.jitter, self.jitter))

    def _refresh(self, snap):
        if snap["status"] == "creating" and time.monotonic() >= snap["_ready_at"]:
            snap["status"] = "error" if snap["volume_id"] in self.fail_volume_ids else "available"
        if snap["status"] == "deleting" and time.monotonic() >= snap["_ready_at"]:
            self.snapshots.pop(snap["id"], None)

    @staticmethod
    def _public(snap):
        return {k: v for k, v in snap.items() if not k.startswith("_")}

    # -- VolumeBackend --------------------------------------------------------
    def _get(self, kind, table, key, view=dict):
        """One GET: the fault point ``volume.get_<kind>``, a counted call, NotFound."""
        faults.point(f"volume.get_{kind}")
        with self._lock:
            self.calls["get"] += 1
            if key not in table:
                raise exception.NotFound(f"{kind.replace('_', ' ')} {key}: not found")
            return view(table[key])

    def get_volume(self, volume_id):
        return self._get("volume", self.volumes, volume_id)

    def get_limits(self):
        faults.point("volume.get_limits")
        with self._lock:
            used = [s for s in self.snapshots.values() if s["status"] != "deleting"]
            return {"snapshots_max": self.snapshot_quota, "snapshots_used": len(used),
                    "gigabytes_max": self.gigabytes_quota,
                    "gigabytes_used": sum(s["size_gb"] for s in used)}

    def create_snapshot(self, volume_id, name, metadata):
        faults.point("volume.create_snapshot")
        if self._sem:
            self._sem.acquire()
        try:
            if self.create_cost:
                time.sleep(self.create_cost)
            with self._lock:
                self.calls["create"] += 1
                vol = self.volumes.get(volume_id)
                if vol is None:
                    raise exception.NotFound(f"volume {volume_id}: not found")
                live = [s for s in self.snapshots.values() if s["status"] != "deleting"]
                if 0 <= self.snapshot_quota <= len(live):
                    raise exception.SnapshotFailed(
                        f"snapshot of volume {volume_id}: quota exceeded (snapshots)")
                sid = str(uuid.uuid4())
                snap = {"id": sid, "name": name, "status": "creating", "volume_id": volume_id,
                        "size_gb": vol["size_gb"], "metadata": dict(metadata),
                        "created_at": _isotime(), "group_snapshot_id": None,
                        "_ready_at": self._ready_at()}
                self.snapshots[sid] = snap
                out = self._public(snap)
        finally:
            if self._sem:
                self._sem.release()
        faults.point("volume.create_snapshot.after")
        return out

    def list_snapshots(self, set_id):
        faults.point("volume.list_snapshots")
        with self._lock:
            self.calls["list"] += 1
            for snap in list(self.snapshots.values()):
                self._refresh(snap)
            return [self._public(s) for s in self.snapshots.values()
                    if s["metadata"].get(naming.META_SET_ID) == set_id]

    def list_all_cgsnap_snapshots(self):
        with self._lock:
            for snap in list(self.snapshots.values()):
                self._refresh(snap)
            return [self._public(s) for s in self.snapshots.values()
                    if naming.META_SET_ID in s["metadata"]]

    def volumes_by_source_snapshot(self):
        out = {}
        for v in self.volumes.values():
            if v.get("snapshot_id"):
                out.setdefault(v["snapshot_id"], []).append(v["id"])
        return out

    def delete_snapshot(self, snapshot_id):
        faults.point("volume.delete_snapshot")
        with self._lock:
            self.calls["delete"] += 1
            snap = self.snapshots.get(snapshot_id)
            if snap is None:
                return
            if snap["status"] == "creating" or snap.get("group_snapshot_id"):
                raise exception.SnapshotFailed(
                    f"delete snapshot {snapshot_id}: snapshot is still creating or is "
                    f"part of a group snapshot")
            snap["status"] = "deleting"
            snap["_ready_at"] = time.monotonic()

    # -- group snapshots ------------------------------------------------------
    def supports_groups(self):
        return True

    def get_group(self, group_id):
        return self._get("group", self.groups, group_id)

    def create_group_snapshot(self, group_id, name, description):
        faults.point("volume.create_group_snapshot")
        if self.create_cost:
            time.sleep(self.create_cost)
        with self._lock:
            self.calls["create"] += 1
            group = self.groups.get(group_id)
            if group is None:
                raise exception.NotFound(f"group {group_id}: not found")
            gsid = str(uuid.uuid4())
            ready_at = self._ready_at()
            for vid in group["volume_ids"]:
                sid = str(uuid.uuid4())
                self.snapshots[sid] = {
                    "id": sid, "name": name, "status": "creating", "volume_id": vid,
                    "size_gb": self.volumes[vid]["size_gb"], "metadata": {},
                    "created_at": _isotime(), "group_snapshot_id": gsid, "_ready_at": ready_at}
            self.group_snapshots[gsid] = {
                "id": gsid, "name": name, "status": "creating", "group_id": group_id,
                "created_at": _isotime(),
                "metadata": naming.parse_group_snapshot_description(description) or {}}
            out = self._group_snapshot(gsid)
        faults.point("volume.create_group_snapshot.after")
        return out

    def _group_snapshot(self, gsid):
        gs = self.group_snapshots[gsid]
        members = [s for s in self.snapshots.values() if s.get("group_snapshot_id") == gsid]
        for snap in members:
            self._refresh(snap)
        if gs["status"] == "creating" and all(s["status"] != "creating" for s in members):
            gs["status"] = ("error" if any(s["status"] == "error" for s in members)
                            else "available")
        return dict(gs)

    def get_group_snapshot(self, group_snapshot_id):
        return self._get("group_snapshot", self.group_snapshots, group_snapshot_id,
                         lambda gs: self._group_snapshot(gs["id"]))

    def list_group_snapshots(self, set_id=None):
        faults.point("volume.list_group_snapshots")
        with self._lock:
            self.calls["list"] += 1
            out = [self._group_snapshot(g) for g in list(self.group_snapshots)]
        return [g for g in out if g["metadata"]
                and (set_id is None or g["metadata"][naming.META_SET_ID] == set_id)]

    def list_group_snapshot_members(self, group_snapshot, set_id):
        with self._lock:
            self.calls["list"] += 1
            return [self._public(s) for s in self.snapshots.values()
                    if s.get("group_snapshot_id") == group_snapshot["id"]]

    def tag_snapshot(self, snapshot_id, name, metadata):
        faults.point("volume.tag_snapshot")
        with self._lock:
            snap = self.snapshots.get(snapshot_id)
            if snap is None:
                raise exception.NotFound(f"snapshot {snapshot_id}: not found")
            snap["metadata"].update(metadata)
            snap["name"] = name

    def delete_group_snapshot(self, group_snapshot_id):
        faults.point("volume.delete_group_snapshot")
        with self._lock:
            self.calls["delete"] += 1
            if group_snapshot_id not in self.group_snapshots:
                return
            if self._group_snapshot(group_snapshot_id)["status"] == "creating":
                raise exception.SnapshotFailed(
                    f"delete group snapshot {group_snapshot_id}: still creating")
            del self.group_snapshots[group_snapshot_id]
            for snap in self.snapshots.values():
                if snap.get("group_snapshot_id") == group_snapshot_id:
                    snap.update(status="deleting", _ready_at=time.monotonic(),
                                group_snapshot_id=None)


class FakeImageBackend:
    """An in-process image store with Glance's interface (unit tests)."""

    def __init__(self):
        self.images = {}

    def ping(self):
        faults.point("image.ping")

    def upload_image(self, name, path, metadata, disk_format="qcow2"):
        faults.point("image.create")
        import os
        iid = str(uuid.uuid4())
        self.images[iid] = {"id": iid, "name": name, "status": "active",
                            "size": os.path.getsize(path), "metadata": dict(metadata)}
        return dict(self.images[iid])

    def list_images(self, set_id):
        return [dict(i) for i in self.images.values()
                if i["metadata"].get(naming.META_SET_ID) == set_id]

    def list_all_cgsnap_images(self):
        return [dict(i) for i in self.images.values() if naming.META_SET_ID in i["metadata"]]

    def delete_image(self, image_id):
        faults.point("image.delete")
        self.images.pop(image_id, None)


def _isotime():
    from cgsnap import manifest
    return manifest.isotime()
