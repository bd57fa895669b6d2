"""Shared pieces of the cgsnap benchmarks: instrumented proxies, the model and
Cinder storage backends with the extra calls the baselines need, dev-cloud
provisioning, and cgsnap set-up (config, persistence variants)."""

import collections
import concurrent.futures
import functools
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.parse
import uuid

from cgsnap import naming
from cgsnap.drivers import fake

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the benchmarks share tests/lab.py (dev-cloud helpers)
    sys.path.insert(1, ROOT)
CLOUDS = (os.environ.get("CGSNAP_BENCH_CLOUDS_YAML")
          or os.path.join(ROOT, ".devcloud", "clouds.yaml"))
# The dev cloud's two shapes (tools/devcloud/README.md): clouds.yaml, the
# tenant's cloud and the admin's.  CGSNAP_BENCH_CLOUDS_YAML /
# CGSNAP_BENCH_PRODUCTION_CLOUDS_YAML point at a cloud started from another tree.
SHAPES = {
    "default": {"clouds": CLOUDS, "cloud": "devcloud", "admin": "devcloud-admin"},
    "production": {"clouds": os.environ.get("CGSNAP_BENCH_PRODUCTION_CLOUDS_YAML")
                   or os.path.join(ROOT, ".devcloud-production", "clouds.yaml"),
        "cloud": "devcloud-prod", "admin": "devcloud-prod-admin"},
}
CACHE_DIR = os.path.join(ROOT, ".state", "bench")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# -- instrumentation ------------------------------------------------------------------------

class CallLog:
    """Thread-safe record of (name, start, end) monotonic intervals."""

    def __init__(self):
        self._lock = threading.Lock()
        self.events = []

    def add(self, name, t0, t1):
        with self._lock:
            self.events.append((name, t0, t1))

    def reset(self):
        with self._lock:
            self.events = []

    def snapshot(self):
        with self._lock:
            return list(self.events)


class CountingVolumes:
    """Wraps a volume backend: every public method call is logged (this is
    the ``api_calls`` count).  Anything else is delegated."""

    NOT_CALLS = ("endpoint_key",)  # no request: the key of the concurrency controller

    def __init__(self, inner, log):
        self._inner = inner
        self._log = log

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr) or name in self.NOT_CALLS:
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                self._log.add(name, t0, time.monotonic())
        return call


class TimedHypervisor:
    """Wraps a hypervisor: logs freeze/thaw intervals, so every strategy's
    window is measured the same way as cgsnap's (freeze() start -> thaw()
    return)."""

    def __init__(self, inner, log):
        self._inner = inner
        self._log = log

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def freeze(self, instance_id):
        t0 = time.monotonic()
        try:
            return self._inner.freeze(instance_id)
        finally:
            self._log.add("freeze", t0, time.monotonic())

    def thaw(self, instance_id):
        t0 = time.monotonic()
        try:
            return self._inner.thaw(instance_id)
        finally:
            self._log.add("thaw", t0, time.monotonic())


class HttpRequests:
    """Counts the HTTP requests every keystoneauth session of this process
    sends, by method and path with ids folded (``GET /volumes/<id>``).

    Use as a context manager; ``counts`` holds the requests sent inside it."""

    _ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")

    def __init__(self):
        self.counts = collections.Counter()
        self._lock = threading.Lock()

    def __enter__(self):
        from keystoneauth1 import session
        self._cls, self._orig = session.Session, session.Session.request
        counter = self

        def request(sess, url, method, *args, **kwargs):
            path = urllib.parse.urlsplit(url).path
            path = re.sub(r"^/v3/<id>", "", counter._ID.sub("<id>", path))
            with counter._lock:
                counter.counts[f"{method} {path}"] += 1
            return counter._orig(sess, url, method, *args, **kwargs)

        self._cls.request = request
        return self

    def __exit__(self, *exc):
        self._cls.request = self._orig
        return False


def window_of(events):
    """(window_s, freeze_call_s, thaw_call_s, t_freeze0, t_thaw1) from a call log."""
    fr = [e for e in events if e[0] == "freeze"]
    th = [e for e in events if e[0] == "thaw"]
    if not fr or not th:
        return None, None, None, None, None
    f, t = fr[0], th[-1]
    return t[2] - f[1], f[2] - f[1], t[2] - t[1], f[1], t[2]


def storage_calls(events, t0=None, t1=None):
    out = [e for e in events if e[0] not in ("freeze", "thaw")]
    if t0 is not None:
        out = [e for e in out if e[1] >= t0 and e[1] <= t1]
    return out


# -- storage backends with the calls the baselines need --------------------------------------

class ModelBackend(fake.FakeVolumeBackend):
    """The in-process model of Cinder used by ``--backend model``.

    Time to a member's point in time is ``latency`` (± ``jitter``), spent in
    the create call itself (a busy API that cuts the snapshot before it
    answers; this is what makes sequential creates cost N x L, as on the
    CPU-bound dev Cinder), followed by an optional asynchronous ``tail``
    during which the snapshot is still ``creating``.  ``max_concurrency`` caps
    creates in flight.  A group snapshot is one call of the same latency that
    cuts every volume of the group.
    """

    def __init__(self, latency, jitter=0.0, max_concurrency=None, tail=0.0, seed=0):
        super().__init__(latency=tail, jitter=0.0, seed=seed)
        self.cut_latency = latency
        self.cut_jitter = jitter
        self._cap = threading.Semaphore(max_concurrency) if max_concurrency else None

    def _cut(self):
        with self._lock:
            d = self.cut_latency + self._rand.uniform(-self.cut_jitter, self.cut_jitter)
        if self._cap:
            self._cap.acquire()
        try:
            time.sleep(max(0.0, d))
        finally:
            if self._cap:
                self._cap.release()

    def create_snapshot(self, volume_id, name, metadata):
        self._cut()
        return super().create_snapshot(volume_id, name, metadata)

    def get_snapshot(self, snapshot_id):
        with self._lock:
            self.calls["get"] += 1
            snap = self.snapshots[snapshot_id]
            self._refresh(snap)
            return self._public(snap)

    def create_group_snapshot(self, group_id, name, description):
        self._cut()
        return super().create_group_snapshot(group_id, name, description)


def cinder_backend_class():

    from cgsnap.drivers import cinder

    class CinderBench(cinder.CinderBackend):
        """cgsnap's Cinder backend plus the per-snapshot GET the baselines need."""

        def get_snapshot(self, snapshot_id):
            return cinder._snapshot_dict(self.client.volume_snapshots.get(snapshot_id))

        def list_snapshots_raw(self, set_id):
            """One list call (raw strategies; no client-side re-filter)."""
            return [{"status": s.status} for s in self.client.volume_snapshots.list(
                search_opts={"metadata": json.dumps({naming.META_SET_ID: set_id})})]

    return CinderBench


def purge_cinder_deleted_rows():
    """``cinder-manage db purge 0``: drop the dev Cinder's soft-deleted rows.

    Every snapshot a bench creates and deletes stays in Cinder's tables as a
    soft-deleted row (with its metadata and quota reservations), and Cinder's
    queries slow down as they grow: within one fleet run raw's Cinder CPU per
    set drifted from 351 to 530 ms.  Purging before each phase (outside the
    timing) gives every phase the same database, as a periodic purge does in
    production."""
    import subprocess
    manage = os.path.join(ROOT, ".devcloud", "venvs", "cinder", "bin", "cinder-manage")
    conf = os.path.join(ROOT, ".devcloud", "cinder", "cinder.conf")
    proc = subprocess.run([manage, "--config-file", conf, "db", "purge", "0"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"cinder-manage db purge failed: {proc.stderr.strip()[-300:]}")


def cinder_session(clouds_yaml=CLOUDS, cloud="devcloud"):
    import openstack.config
    loader = openstack.config.OpenStackConfig(config_files=[clouds_yaml])
    region = loader.get_one(cloud=cloud)
    return region.get_session(), region


def make_cinder_backend(shape="default", pool_size=None):
    """cgsnap's Cinder backend (bench flavour) for a dev-cloud shape, its
    HTTP pool sized as the product sizes it (``[snapshot]
    max_parallel_creates``) unless ``pool_size`` is given."""
    if pool_size is None:
        from cgsnap.conf import CONF
        pool_size = CONF.snapshot.max_parallel_creates
    sh = SHAPES[shape]
    session, region = cinder_session(sh["clouds"], sh["cloud"])
    return cinder_backend_class()(session, "3.71", region_name=region.region_name,
                                  pool_size=pool_size)


def cinder_lab(shape="default"):
    from tests import lab as testlab
    sh = SHAPES[shape]
    return testlab.CinderLab(sh["clouds"], cloud=sh["cloud"], admin_cloud=sh["admin"])


GROUP_TYPE = "fake-consistent"  # the dev cloud's consistent group type


def cinder_instances(lab, specs, tag, in_group=True, workers=8):
    """Test-driver instances with in-use Cinder volumes: ``specs`` maps a key
    to a volume count; each instance's volumes are in their own group of the
    consistent type GROUP_TYPE when ``in_group``.  Cached in
    .state/bench/<tag>.json and reused while every volume is still in-use."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = os.path.join(CACHE_DIR, f"{tag}.json")
    cached = {}
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
    out, todo = {}, []
    for key, n in specs.items():
        entry = cached.get(str(key))
        if (entry and len(entry["volume_ids"]) == n and entry.get("group_type") ==
                (GROUP_TYPE if in_group else None) and _all_in_use(lab, entry["volume_ids"])):
            out[key] = entry
        else:
            if entry:
                lab.delete_volumes(entry["volume_ids"])
            todo.append((key, n))
    if todo:
        _ensure_volume_quota(lab, sum(n for _, n in todo))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            made = list(pool.map(lambda kn: _provision(lab, kn[1], f"bench-{tag}-{kn[0]}",
                                                       in_group), todo))
        for (key, _), entry in zip(todo, made):
            out[key] = cached[str(key)] = entry
        with open(path, "w") as f:
            json.dump(cached, f, indent=2)
    return out


def _provision(lab, n, name, in_group):
    instance_id = str(uuid.uuid4())
    gid = lab.create_group(GROUP_TYPE, name) if in_group else None
    ids = lab.create_attached_volumes(instance_id, n, prefix=name, group_id=gid,
                                      deadline=180)
    return {"instance_id": instance_id, "group_id": gid, "volume_ids": ids,
            "group_type": GROUP_TYPE if in_group else None}


def _ensure_volume_quota(lab, more):
    q = lab.admin.quotas.get(lab.project_id, usage=True)
    need = q.volumes["in_use"] + q.volumes["reserved"] + more + 10
    if 0 <= q.volumes["limit"] < need:
        print(f"bench: raising the volumes quota of project {lab.project_id} "
              f"from {q.volumes['limit']} to {need}", file=sys.stderr)
        lab.set_quota(volumes=need)


def _all_in_use(lab, ids):
    try:
        return all(lab.user.volumes.get(v).status == "in-use" for v in ids)
    except Exception:
        return False


# -- cgsnap set-up ----------------------------------------------------------------------------

def configure_cgsnap(state_dir, max_parallel_creates=None, adaptive=True):
    """cgsnap as an operator of the dev cloud would configure it: the tenant
    cannot read group specs, so the consistent group type is listed.
    ``adaptive=False``: a fixed ``max_parallel_creates`` creates in flight
    (``[snapshot] adaptive_creates = false``)."""
    from cgsnap.conf import CONF
    CONF([], project="cgsnap", default_config_files=[])
    if not adaptive:
        CONF.set_override("adaptive_creates", False, group="snapshot")
    CONF.set_override("state_dir", state_dir)
    CONF.set_override("consistent_group_types", [GROUP_TYPE], group="snapshot")
    if max_parallel_creates:
        CONF.set_override("max_parallel_creates", max_parallel_creates, group="snapshot")


class PersistenceTimer:
    """Times every TaskFlow logbook write (Connection.update_* / save_logbook)."""

    METHODS = ("update_atom_details", "update_flow_details", "save_logbook")

    def __init__(self, log):
        self.log = log
        self._orig = {}

    def __enter__(self):
        from taskflow.persistence.backends import impl_sqlalchemy as impl
        for name in self.METHODS:
            orig = getattr(impl.Connection, name)
            self._orig[name] = orig

            def wrapped(conn, *a, _orig=orig, _name=name, **kw):
                t0 = time.monotonic()
                try:
                    return _orig(conn, *a, **kw)
                finally:
                    self.log.add("db." + _name, t0, time.monotonic())
            setattr(impl.Connection, name, wrapped)
        return self

    def __exit__(self, *exc):
        from taskflow.persistence.backends import impl_sqlalchemy as impl
        for name, orig in self._orig.items():
            setattr(impl.Connection, name, orig)


def emit(doc, out_path, as_json):
    """Write ``doc`` to ``out_path`` (if given); print it as JSON if asked.
    Returns True when the caller should print its human table instead."""
    if out_path:
        with open(out_path, "w") as f:
            json.dump(doc, f, indent=1)
    if as_json:
        json.dump(doc, sys.stdout, indent=1)
        print()
        return False
    return True
