"""``cgsnap create --all-instances``: one set for every running instance of
this host, a few at a time, then one summary.

What a nightly cron job needs:
- the instances: every running domain, narrowed by name globs
  (``--match``/``--exclude``) and by a label in the domain's own metadata
  (``--domain-label``, see :data:`cgsnap.drivers.libvirt_driver.LABELS_NS`);
- bounded concurrency (``--concurrency``): each set still has its own short
  freeze window; the bound keeps the host's and Cinder's load flat;
- ``--prune POLICY``: each instance is pruned right after its own set, and
  only when that set succeeded, so a run of failures never eats the last
  good set;
- one result per instance, whatever happened to the others: the run goes on
  past a failure and exits 11 (:data:`cgsnap.exception.EXIT_PARTIAL`) when
  any instance failed.
"""

import concurrent.futures
import fnmatch
import logging
import time

from cgsnap import api, drivers, exception

LOG = logging.getLogger(__name__)

PRUNE_KEYS = {"keep-last": "keep_last", "keep-hourly": "keep_hourly",
              "keep-daily": "keep_daily", "keep-weekly": "keep_weekly",
              "keep-monthly": "keep_monthly", "keep-yearly": "keep_yearly",
              "keep-within": "keep_within", "keep-failed": "keep_failed",
              "min-keep": "min_keep"}


def parse_prune_policy(text, duration=None):
    """``'keep-daily=7,keep-weekly=4'`` -> a :func:`cgsnap.retention.plan`
    policy dict.  ``duration`` turns ``keep-within``'s text into seconds.
    Raises ValueError with a one-line reason."""
    policy = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or key not in PRUNE_KEYS:
            raise ValueError(f"{part!r}: give RULE=N with RULE one of {', '.join(PRUNE_KEYS)}")
        if key == "keep-within":
            policy["keep_within"] = duration(value) if duration else float(value)
            continue
        if not value.strip().isdigit():
            raise ValueError(f"{part!r}: {key} takes a whole number, 0 or more")
        policy[PRUNE_KEYS[key]] = int(value)
    if not any(policy.get(k) for k in ("keep_last", "keep_hourly", "keep_daily",
                                        "keep_weekly", "keep_monthly", "keep_yearly",
                                        "keep_within")):
        raise ValueError(f"{text!r}: a prune policy needs at least one keep rule")
    return policy


def select(instances, match=(), exclude=(), labels=None):
    """The instances (``{"id", "name", "labels"}``) a host-wide run takes:
    names matching any ``match`` glob (all if none), none of the ``exclude``
    globs (name or UUID), and every ``labels`` pair among the domain's own."""
    labels = labels or {}
    out = []
    for inst in instances:
        names = (inst["name"], inst["id"])
        if match and not any(fnmatch.fnmatchcase(n, g) for g in match for n in names):
            continue
        if any(fnmatch.fnmatchcase(n, g) for g in exclude for n in names):
            continue
        if any(inst.get("labels", {}).get(k) != v for k, v in labels.items()):
            continue
        out.append(inst)
    return sorted(out, key=lambda i: i["name"])


def run(create_kw, match=(), exclude=(), domain_labels=None, concurrency=2, prune=None,
        progress=None):
    """Snapshot every selected running instance; returns one row per instance:
    ``{"instance", "instance_id", "result", "exit_code", "set_id",
    "consistency", "freeze_window_s", "seconds", "pruned", "error"}`` with
    ``result`` ``ok`` or ``failed``.  ``create_kw`` goes to
    :func:`cgsnap.api.create_snapshot_set` for each instance (``name`` gets
    the instance's name in front).  Raises InstanceNotFound when nothing
    matches: a cron job that snapshots nothing must not look like success."""
    running = drivers.get().hypervisor.running_instances()
    chosen = select(running, match, exclude, domain_labels)
    if not chosen:
        raise exception.InstanceNotFound(
            f"no running instance matches (of {len(running)} running"
            + (f"; --match {' '.join(match)}" if match else "")
            + (f"; --exclude {' '.join(exclude)}" if exclude else "")
            + (f"; --domain-label {domain_labels}" if domain_labels else "") + ")")
    with concurrent.futures.ThreadPoolExecutor(max(1, concurrency),
                                               thread_name_prefix="cgsnap-host") as pool:
        futures = [pool.submit(_one, inst, create_kw, prune) for inst in chosen]
        rows = []
        for fut in futures:
            row = fut.result()
            if progress:
                progress(row)
            rows.append(row)
    return rows


def _one(inst, create_kw, prune):
    kw = dict(create_kw)
    if kw.get("name"):
        kw["name"] = f"{inst['name']}-{kw['name']}"
    row = {"instance": inst["name"], "instance_id": inst["id"], "result": "failed",
           "exit_code": exception.EXIT_ERROR, "set_id": None, "consistency": None,
           "freeze_window_s": None, "seconds": None, "pruned": None, "error": None}
    t0 = time.monotonic()
    try:
        doc = api.create_snapshot_set(inst["id"], **kw)
        row.update(result="ok", exit_code=exception.EXIT_OK, set_id=doc["id"],
                   consistency=doc.get("consistency"),
                   freeze_window_s=(doc.get("freeze") or {}).get("window_s"))
    except exception.CgsnapError as e:
        row.update(exit_code=e.exit_code, error=str(e))
    except Exception as e:  # noqa: BLE001 - one instance's bug must not stop the others
        LOG.exception("host-wide run: %s", inst["name"])
        row.update(error=f"internal error: {type(e).__name__}: {e}")
    row["seconds"] = round(time.monotonic() - t0, 3)
    if prune is not None and row["result"] == "ok":  # never after a failed set
        row["pruned"] = _prune(inst, prune, row)
    return row


def _prune(inst, policy, row):
    try:
        rows = api.prune(policy, inst["id"])
    except exception.CgsnapError as e:
        row.update(result="failed", exit_code=e.exit_code, error=f"prune: {e}")
        return None
    failed = [r for r in rows if r["result"].startswith("failed")]
    if failed:
        row.update(result="failed", exit_code=exception.EXIT_CLEANUP,
                   error="prune: " + "; ".join(f"{r['id']}: {r['result']}" for r in failed))
    return sum(r["result"] == "deleted" for r in rows)
