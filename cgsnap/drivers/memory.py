"""An in-process volume backend with configurable latency (unit tests, benchmarks).

It models Cinder closely enough for the flow: snapshots start ``creating``
and become ``available`` after ``latency`` seconds (± ``jitter``), a
concurrency cap can serialise creates like a busy API, quotas are enforced,
and any volume can be put in an arbitrary status.  It is never the only proof
a feature works: the functional tier runs the same flows on real Cinder.
"""

import random
import threading
import time
import uuid

from cgsnap import exception, faults, naming


class MemoryVolumeBackend:
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

    # -- test helpers ---------------------------------------------------------
    def add_volume(self, volume_id=None, size_gb=1, status="in-use", attached_to=(),
                   name=None):
        vid = volume_id or str(uuid.uuid4())
        self.volumes[vid] = {"id": vid, "name": name or f"vol-{vid[:8]}", "status": status,
                             "size_gb": size_gb, "attached_to": list(attached_to),
                             "group_id": None}
        return vid

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
    def get_volume(self, volume_id):
        faults.point("volume.get_volume")
        with self._lock:
            self.calls["get"] += 1
            if volume_id not in self.volumes:
                raise exception.NotFound(f"volume {volume_id}: not found")
            return dict(self.volumes[volume_id])

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
                        "created_at": _isotime(), "_ready_at": self._ready_at()}
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
            if snap["status"] == "creating":
                raise exception.SnapshotFailed(
                    f"delete snapshot {snapshot_id}: snapshot is still creating")
            snap["status"] = "deleting"
            snap["_ready_at"] = time.monotonic()


class MemoryImageBackend:
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
