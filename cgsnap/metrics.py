"""The Prometheus textfile (``[metrics] textfile_dir``) for node_exporter's
textfile collector, rewritten atomically at the end of every create, prune
and verify run.

The catalog is the source of truth: the file is rebuilt from it each time,
so a run that dies leaves the previous file, never a half-written one, and
two hosts never disagree about what one catalog says.  What a run did itself
(a prune's deletions and failures, a verify's broken sets) is kept in
``<state_dir>/metrics-runs.json`` so that the next run's file still shows it.

The alert to set: ``time() - cgsnap_last_success_timestamp_seconds > 26*3600``
(a nightly set is late), and ``cgsnap_verify_broken_sets > 0``.
"""

import datetime
import json
import os

from prometheus_client import CollectorRegistry, Gauge, Summary, write_to_textfile

from cgsnap import manifest, state
from cgsnap.conf import CONF

FILENAME = "cgsnap.prom"
RUNS = "metrics-runs.json"


def _ts(iso):
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _runs_path():
    return os.path.join(state.state_dir(), RUNS)


def record_run(kind, **values):
    """Remember what a prune or verify run did, for the textfile."""
    try:
        with open(_runs_path()) as f:
            runs = json.load(f)
    except (OSError, ValueError):
        runs = {}
    runs[kind] = dict(values, at=datetime.datetime.now(datetime.timezone.utc).timestamp())
    tmp = _runs_path() + ".tmp"
    with open(tmp, "w") as f:
        json.dump(runs, f)
    os.replace(tmp, _runs_path())
    return runs


def build(docs, runs):
    """A registry holding the metrics of ``docs`` (verified manifests, and
    ``corrupt`` placeholders) and ``runs`` (see :func:`record_run`)."""
    reg = CollectorRegistry()
    last_ok = Gauge("cgsnap_last_success_timestamp_seconds",
                    "When the newest available set of the instance was taken",
                    ["instance_id", "instance"], registry=reg)
    last_window = Gauge("cgsnap_last_freeze_window_seconds",
                        "Freeze window of the newest available set of the instance",
                        ["instance_id", "instance"], registry=reg)
    by_status = Gauge("cgsnap_sets", "Snapshot sets in the catalog, by status", ["status"],
                      registry=reg)
    window = Summary("cgsnap_freeze_window_seconds",
                     "Freeze windows of the available sets in the catalog", registry=reg)
    duration = Summary("cgsnap_set_duration_seconds",
                       "From the start of the freeze call to the end of the set, for the "
                       "available sets in the catalog", registry=reg)
    newest = {}
    counts = {}
    for doc in docs:
        counts[doc["status"]] = counts.get(doc["status"], 0) + 1
        if doc["status"] != manifest.STATUS_AVAILABLE:
            continue
        fr = doc.get("freeze") or {}
        if fr.get("window_s") is not None:
            window.observe(fr["window_s"])
        if fr.get("started_at") and doc.get("updated_at"):
            duration.observe(max(0.0, _ts(doc["updated_at"]) - _ts(fr["started_at"])))
        if doc["instance_id"] not in newest or doc["created_at"] > \
                newest[doc["instance_id"]]["created_at"]:
            newest[doc["instance_id"]] = doc
    for status in sorted(set(counts) | {manifest.STATUS_AVAILABLE, manifest.STATUS_FAILED}):
        by_status.labels(status).set(counts.get(status, 0))
    for inst, doc in newest.items():
        labels = (inst, doc.get("instance_name") or "")
        last_ok.labels(*labels).set(_ts(doc["created_at"]))
        if (doc.get("freeze") or {}).get("window_s") is not None:
            last_window.labels(*labels).set(doc["freeze"]["window_s"])
    prune, verify = runs.get("prune") or {}, runs.get("verify") or {}
    for name, help_text, value in (
            ("cgsnap_prune_last_run_timestamp_seconds", "When prune last ran", prune.get("at")),
            ("cgsnap_prune_deleted_sets", "Sets the last prune deleted", prune.get("deleted")),
            ("cgsnap_prune_failed_sets", "Sets the last prune failed to delete",
             prune.get("failed")),
            ("cgsnap_verify_last_run_timestamp_seconds", "When verify last ran",
             verify.get("at")),
            ("cgsnap_verify_broken_sets", "Sets the last verify found broken",
             verify.get("broken"))):
        if value is not None:
            Gauge(name, help_text, registry=reg).set(value)
    return reg


def write(docs):
    """Rewrite the textfile if ``[metrics] textfile_dir`` is set; return its path."""
    directory = CONF.metrics.textfile_dir
    if not directory:
        return None
    try:
        with open(_runs_path()) as f:
            runs = json.load(f)
    except (OSError, ValueError):
        runs = {}
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILENAME)
    write_to_textfile(path, build(docs, runs))  # a temporary file, then rename
    os.chmod(path, 0o644)  # node_exporter runs as its own user
    return path
