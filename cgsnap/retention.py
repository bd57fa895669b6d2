"""Retention: which snapshot sets a prune keeps.  One pure function,
:func:`plan`, that ``cgsnap prune`` and everything else call.

The period rules follow Proxmox VE's ``prune-backups`` (``PVE::Storage::
prune_mark_backup_group``; Proxmox Backup Server's ``compute_prune_info``):

* each instance's sets are decided separately, newest first;
* the rules run in the order keep-last, -hourly, -daily, -weekly, -monthly,
  -yearly, each over the sets no earlier rule decided;
* a rule keeps the newest set of each period until it has covered N periods;
  the older sets of a period it kept are removed by that rule; a period that
  an earlier rule already covered is skipped and does not count;
* periods are local time in the policy's time zone, weeks are ISO weeks.

cgsnap adds what its users have lost backups to (restic's and Proxmox
users' reports of retention deleting the last good backup after a run of
failures):

* only ``available`` sets whose manifest verifies are *good*, and only good
  sets count toward a rule; a failed set never counts as a backup, and
  failed sets are removed by their own rule, ``keep_failed`` (newest N kept);
* ``keep_within`` (seconds) keeps every good set no older than that,
  measured from the newest good set, not from now: a host whose backups
  stopped a month ago keeps them;
* the floor ``min_keep`` (default 1): never fewer than N good sets of an
  instance, whatever the rules say;
* protected sets are kept and count toward nothing; sets that are
  ``creating``, ``deleting`` or corrupt are always kept;
* ``labels``: only sets carrying every label are decided (the others are
  kept, untouched), so two policies on one instance do not eat each other's
  sets; the floor is per instance within that selection.

Rules apply in this order: the period rules, then ``keep_within``, then the
floor.
"""

import datetime
import zoneinfo

from cgsnap import exception, manifest

PERIOD_RULES = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                "keep_yearly")
POLICY_KEYS = PERIOD_RULES + ("keep_within", "keep_failed", "min_keep", "labels", "timezone",
                              "allow_empty")

# reasons
PROTECTED, IN_PROGRESS, CORRUPT, NOT_SELECTED = "protected", "in progress", "corrupt", \
    "not selected (labels)"
KEEP_WITHIN, MIN_KEEP, KEEP_FAILED = "keep-within", "min-keep", "keep-failed"
FAILED, NO_RULE = "failed", "no rule keeps it"


class EmptyPolicy(ValueError):
    """A policy with no rule at all would remove every set."""


def plan(sets, policy, now):
    """``[(set_id, keep, reason)]``, one entry for every set of ``sets``, in
    the order given.

    ``sets``: manifests (dicts) of any instances.  ``policy``: the keys of
    :data:`POLICY_KEYS` (the ``keep_*`` ints, ``keep_within`` seconds,
    ``keep_failed`` default 0, ``min_keep`` default 1, ``labels`` a dict,
    ``timezone`` an IANA name, default the host's; ``allow_empty`` lets a policy
    without rules remove every set down to the floor).  ``now``: a
    timezone-aware datetime (sets stamped in the future are treated as now).
    Raises :class:`EmptyPolicy`, or ValueError for a bad policy."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    pol = _checked(policy)
    try:
        tz = zoneinfo.ZoneInfo(pol["timezone"]) if pol["timezone"] else None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {pol['timezone']!r} (give an IANA name such as "
                         "Europe/Berlin)") from None
    decided = {}
    by_instance = {}
    seen = set()
    for doc in sets:
        sid = doc.get("id")
        if sid in seen:
            raise ValueError(f"set {sid} is given twice")
        seen.add(sid)
        reason = _fixed_reason(doc, pol["labels"])
        if reason:
            decided[sid] = (True, reason)
        else:
            by_instance.setdefault(doc.get("instance_id"), []).append(doc)
    for docs in by_instance.values():
        decided.update(_plan_instance(docs, pol, now, tz))
    return [(d.get("id"), *decided[d.get("id")]) for d in sets]


def _checked(policy):
    unknown = set(policy) - set(POLICY_KEYS)
    if unknown:
        raise ValueError(f"unknown policy keys: {', '.join(sorted(unknown))}")
    pol = {k: policy.get(k) for k in POLICY_KEYS}
    for k in PERIOD_RULES + ("keep_failed",):
        pol[k] = int(pol[k] or 0)
        if pol[k] < 0:
            raise ValueError(f"{k} must be 0 or more")
    pol["min_keep"] = 1 if pol["min_keep"] is None else int(pol["min_keep"])
    pol["keep_within"] = float(pol["keep_within"] or 0)
    if pol["min_keep"] < 0 or pol["keep_within"] < 0:
        raise ValueError("min_keep and keep_within must be 0 or more")
    pol["labels"] = dict(pol["labels"] or {})
    if not any(pol[k] for k in PERIOD_RULES) and not pol["keep_within"] \
            and not pol["allow_empty"]:
        raise EmptyPolicy("the policy has no rule: it would remove every set "
                          "(give a --keep-* rule, or say that every set may go)")
    return pol


def _fixed_reason(doc, labels):
    """Why ``doc`` is kept whatever the rules say, or None if the rules decide."""
    if any((doc.get("labels") or {}).get(k) != v for k, v in labels.items()):
        return NOT_SELECTED
    if doc.get("protected") is True:
        return PROTECTED
    if doc.get("status") in (manifest.STATUS_CREATING, manifest.STATUS_DELETING):
        return IN_PROGRESS
    try:
        manifest.verify(doc)
        _created(doc)
    except (exception.IntegrityError, KeyError, TypeError, ValueError):
        return CORRUPT
    if doc.get("status") in (manifest.STATUS_AVAILABLE, manifest.STATUS_FAILED):
        return None
    return f"status {doc.get('status')}"  # error_deleting and the like: left to the operator


def _created(doc):
    when = datetime.datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("created_at has no time zone")
    return when


def _plan_instance(docs, pol, now, tz):
    out = {}
    newest_first = sorted(docs, key=lambda d: (min(_created(d), now), d["id"]), reverse=True)
    failed = [d for d in newest_first if d["status"] == manifest.STATUS_FAILED]
    good = [d for d in newest_first if d["status"] == manifest.STATUS_AVAILABLE]
    for i, d in enumerate(failed):
        out[d["id"]] = (True, KEEP_FAILED) if i < pol["keep_failed"] else (False, FAILED)

    marks = {}  # set id -> (keep, reason), as the period rules decide
    for rule in PERIOD_RULES:
        if pol[rule]:
            _mark(good, marks, pol[rule], rule.replace("_", "-"),
                  lambda d, r=rule: _period(r, d, tz))
    kept = lambda d: marks.get(d["id"], (False,))[0]  # noqa: E731
    if pol["keep_within"] and good:
        horizon = min(_created(good[0]), now) - datetime.timedelta(seconds=pol["keep_within"])
        for d in good:
            if not kept(d) and _created(d) >= horizon:
                marks[d["id"]] = (True, KEEP_WITHIN)
    count = sum(1 for d in good if kept(d))
    for d in good:  # the floor: the newest good sets nothing else kept
        if count >= pol["min_keep"]:
            break
        if not kept(d):
            marks[d["id"]] = (True, MIN_KEEP)
            count += 1
    for d in good:
        out[d["id"]] = marks.get(d["id"], (False, NO_RULE))
    return out


def _mark(newest_first, marks, count, rule, period_of):
    """One period rule, as Proxmox applies it (see the module docstring)."""
    already = {period_of(d) for d in newest_first if marks.get(d["id"], (False,))[0]}
    included = set()
    for d in newest_first:
        if d["id"] in marks:
            continue
        period = period_of(d)
        if period in already:
            continue
        if period not in included:
            if len(included) >= count:
                break
            included.add(period)
            marks[d["id"]] = (True, rule)
        else:
            marks[d["id"]] = (False, f"{rule}: not the newest of its period")


def _period(rule, doc, tz):
    """The period of ``doc`` that ``rule`` counts, in local time of ``tz``
    (the host's when None).  An hour is a real hour: across a DST fall-back
    the two hours that share a wall-clock label are two periods."""
    if rule == "keep_last":
        return doc["id"]  # every set is a period of its own
    local = _created(doc).astimezone(tz)
    if rule == "keep_hourly":
        return (local.year, local.month, local.day, local.hour, local.utcoffset())
    if rule == "keep_daily":
        return (local.year, local.month, local.day)
    if rule == "keep_weekly":
        iso = local.isocalendar()
        return (iso.year, iso.week)
    if rule == "keep_monthly":
        return (local.year, local.month)
    return (local.year,)
