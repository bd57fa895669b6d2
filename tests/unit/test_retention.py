"""cgsnap.retention.plan: Proxmox VE's prune-backups semantics, plus the rules
that make losing the last good set impossible (failed sets never count,
keep_within from the newest good set, the floor, protected sets)."""

import datetime
import itertools
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgsnap import manifest, retention

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
INSTANCE = {"id": "5e7c3a9e-1f00-4d2c-8a11-7a2b6f3c9d01", "name": "web1"}
_ids = itertools.count(1)


def _set(when, status="available", instance=INSTANCE, labels=None, protected=False):
    sid = str(uuid.UUID(int=next(_ids)))
    doc = manifest.new(sid, "n", instance, [], {}, labels=labels)
    doc.update(status=status, protected=protected,
               created_at=when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    return manifest.seal(doc)


def _at(*args, tz=UTC):
    return datetime.datetime(*args, tzinfo=tz)


def _decide(sets, **policy):
    policy.setdefault("timezone", "UTC")
    return {sid: (keep, reason) for sid, keep, reason in retention.plan(sets, policy, NOW)}


def _kept(sets, **policy):
    d = _decide(sets, **policy)
    return [s["id"] for s in sets if d[s["id"]][0]]


def test_keep_last_keeps_the_newest_n_and_one_entry_per_set():
    sets = [_set(NOW - datetime.timedelta(hours=h)) for h in range(5)]
    out = retention.plan(sets, {"keep_last": 3, "timezone": "UTC"}, NOW)
    assert [sid for sid, _, _ in out] == [s["id"] for s in sets]
    assert [(keep, reason) for _, keep, reason in out] == \
        [(True, "keep-last")] * 3 + [(False, retention.NO_RULE)] * 2


def test_in_a_period_the_newest_is_kept_and_the_rule_removes_the_rest():
    today = [_set(_at(2026, 12, 4, h)) for h in (11, 10, 9)]
    yesterday = [_set(_at(2026, 12, 3, h)) for h in (20, 8)]
    d = _decide(today + yesterday, keep_daily=2)
    assert d[today[0]["id"]] == (True, "keep-daily")
    assert d[yesterday[0]["id"]] == (True, "keep-daily")
    for s in today[1:] + yesterday[1:]:
        assert d[s["id"]] == (False, "keep-daily: not the newest of its period")


def test_a_rule_skips_periods_an_earlier_rule_kept_and_they_do_not_count():
    """As Proxmox: keep-last keeps today's newest; keep-daily then skips today
    (already covered, not counted) and covers the two days before."""
    a, b = _set(_at(2026, 12, 4, 11)), _set(_at(2026, 12, 4, 10))
    c, e = _set(_at(2026, 12, 3, 11)), _set(_at(2026, 12, 2, 11))
    f = _set(_at(2026, 12, 1, 11))
    d = _decide([a, b, c, e, f], keep_last=1, keep_daily=2)
    assert d[a["id"]] == (True, "keep-last")
    assert d[b["id"]] == (False, retention.NO_RULE)  # skipped by keep-daily, unmarked
    assert d[c["id"]] == d[e["id"]] == (True, "keep-daily")
    assert d[f["id"]] == (False, retention.NO_RULE)


def test_weeks_are_iso_weeks_across_the_new_year():
    # 2025-12-29 (Monday) .. 2026-01-04 (Sunday) is ISO week 2026-W01.
    mon_w02, sun_w01, mon_w01 = (_set(_at(2026, 1, 5, 9)), _set(_at(2026, 1, 4, 9)),
                                 _set(_at(2025, 12, 29, 9)))
    assert _kept([mon_w02, sun_w01, mon_w01], keep_weekly=2) == [mon_w02["id"], sun_w01["id"]]


def test_monthly_and_yearly():
    sets = [_set(_at(2026, 11, 30)), _set(_at(2026, 11, 1)), _set(_at(2026, 10, 31)),
            _set(_at(2025, 12, 31)), _set(_at(2025, 1, 1))]
    assert _kept(sets, keep_monthly=2) == [sets[0]["id"], sets[2]["id"]]
    assert _kept(sets, keep_yearly=2) == [sets[0]["id"], sets[3]["id"]]


def test_periods_are_local_time_in_the_policy_s_time_zone():
    # 23:30 UTC on 1 June is already 2 June in Berlin (CEST, +2).
    late, early = _set(_at(2026, 6, 1, 23, 30)), _set(_at(2026, 6, 1, 8, 0))
    assert _kept([late, early], keep_daily=1, min_keep=0, timezone="UTC") == [late["id"]]
    assert _kept([late, early], keep_daily=2, min_keep=0, timezone="UTC") == [late["id"]]
    assert _kept([late, early], keep_daily=2, min_keep=0, timezone="Europe/Berlin") == \
        [late["id"], early["id"]]


def test_the_two_hours_that_share_a_label_at_a_dst_fall_back_are_two_hours():
    # Berlin falls back at 01:00 UTC on 25 October 2026: 00:30Z and 01:30Z are both 02:30 local.
    first, second = _set(_at(2026, 10, 25, 0, 30)), _set(_at(2026, 10, 25, 1, 30))
    assert _kept([second, first], keep_hourly=2, timezone="Europe/Berlin") == \
        [second["id"], first["id"]]
    assert _kept([second, first], keep_daily=2, min_keep=0, timezone="Europe/Berlin") == \
        [second["id"]]


def test_failed_sets_never_count_and_have_their_own_rule():
    failed = [_set(NOW - datetime.timedelta(hours=h), status="failed") for h in range(1, 6)]
    good = [_set(NOW - datetime.timedelta(days=d)) for d in (3, 4, 5)]
    d = _decide(failed + good, keep_last=2)
    assert [d[s["id"]] for s in good] == [(True, "keep-last")] * 2 + [(False, retention.NO_RULE)]
    assert all(d[s["id"]] == (False, retention.FAILED) for s in failed)
    d = _decide(failed + good, keep_last=2, keep_failed=2)
    assert [d[s["id"]][1] for s in failed] == [retention.KEEP_FAILED] * 2 + [retention.FAILED] * 3


def test_keep_within_counts_from_the_newest_good_set_not_from_now():
    """Backups stopped three weeks ago and every run since failed: a
    `--keep-within 2d` from now would delete them all."""
    failed = [_set(NOW - datetime.timedelta(days=d), status="failed") for d in range(1, 21)]
    good = [_set(NOW - datetime.timedelta(days=21, hours=h)) for h in (0, 24, 47, 49)]
    d = _decide(failed + good, keep_within=2 * 86400, min_keep=0)
    assert [d[s["id"]] for s in good] == [(True, retention.KEEP_WITHIN)] * 3 + \
        [(False, retention.NO_RULE)]


def test_the_floor_keeps_the_newest_good_sets():
    good = [_set(NOW - datetime.timedelta(days=d)) for d in range(5)]
    d = _decide(good, keep_last=1, min_keep=3)
    assert [d[s["id"]][1] for s in good] == ["keep-last", retention.MIN_KEEP, retention.MIN_KEEP,
                                             retention.NO_RULE, retention.NO_RULE]


def test_protected_and_unfinished_and_corrupt_sets_are_kept_and_count_toward_nothing():
    protected = _set(NOW, protected=True)
    creating = _set(NOW - datetime.timedelta(hours=1), status="creating")
    deleting = _set(NOW - datetime.timedelta(hours=2), status="deleting")
    corrupt = dict(_set(NOW - datetime.timedelta(hours=3)), name="tampered")
    good = [_set(NOW - datetime.timedelta(days=d)) for d in (1, 2)]
    d = _decide([protected, creating, deleting, corrupt] + good, keep_last=1, min_keep=0)
    assert d[protected["id"]] == (True, retention.PROTECTED)
    assert d[creating["id"]] == d[deleting["id"]] == (True, retention.IN_PROGRESS)
    assert d[corrupt["id"]] == (True, retention.CORRUPT)
    assert [d[s["id"]] for s in good] == [(True, "keep-last"), (False, retention.NO_RULE)]


def test_labels_select_which_sets_a_policy_decides():
    hourly = [_set(NOW - datetime.timedelta(hours=h), labels={"policy": "hourly"})
              for h in range(3)]
    daily = [_set(NOW - datetime.timedelta(days=d, minutes=30), labels={"policy": "daily"})
             for d in range(3)]
    d = _decide(hourly + daily, keep_last=1, labels={"policy": "hourly"})
    assert [d[s["id"]][0] for s in hourly] == [True, False, False]
    assert all(d[s["id"]] == (True, retention.NOT_SELECTED) for s in daily)


def test_each_instance_is_decided_on_its_own():
    other = {"id": "0c1d2e3f-0000-4000-8000-000000000002", "name": "db1"}
    a = [_set(NOW - datetime.timedelta(hours=h)) for h in range(3)]
    b = [_set(NOW - datetime.timedelta(hours=h), instance=other) for h in range(3)]
    assert _kept(a + b, keep_last=1) == [a[0]["id"], b[0]["id"]]


def test_an_empty_policy_is_refused_unless_every_set_may_go():
    sets = [_set(NOW - datetime.timedelta(hours=h)) for h in range(3)]
    with pytest.raises(retention.EmptyPolicy):
        retention.plan(sets, {}, NOW)
    assert _kept(sets, allow_empty=True) == [sets[0]["id"]]  # the floor still holds
    assert _kept(sets, allow_empty=True, min_keep=0) == []


def test_bad_policies_and_naive_times_are_refused():
    with pytest.raises(ValueError, match="unknown policy keys: keep_dayly"):
        retention.plan([], {"keep_dayly": 1}, NOW)
    with pytest.raises(ValueError, match="0 or more"):
        retention.plan([], {"keep_last": -1}, NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        retention.plan([], {"keep_last": 1}, NOW.replace(tzinfo=None))
    s = _set(NOW)
    with pytest.raises(ValueError, match="given twice"):
        retention.plan([s, s], {"keep_last": 1}, NOW)


def test_a_stored_v1_manifest_is_decided_like_any_other():
    import json
    import os
    with open(os.path.join(os.path.dirname(__file__), "data", "manifest-v1.json")) as f:
        v1 = json.load(f)
    newer = _set(NOW, instance={"id": v1["instance_id"], "name": "web1"})
    assert _kept([newer, v1], keep_last=2) == [newer["id"], v1["id"]]
    assert _decide([newer, v1], keep_last=1)[v1["id"]] == (False, retention.NO_RULE)


# -- properties over random histories ------------------------------------------

_STATUSES = ["available"] * 6 + ["failed"] * 3 + ["creating", "deleting"]


@st.composite
def histories(draw):
    n = draw(st.integers(0, 25))
    sets = []
    for _ in range(n):
        age = draw(st.integers(0, 400 * 86400))
        status = draw(st.sampled_from(_STATUSES))
        inst = draw(st.sampled_from([INSTANCE, {"id": "0c1d2e3f-0000-4000-8000-000000000002"}]))
        sets.append(_set(NOW - datetime.timedelta(seconds=age), status=status, instance=inst,
                         protected=draw(st.booleans()) and draw(st.booleans())))
    return sets


policies = st.fixed_dictionaries(
    {k: st.integers(0, 4) for k in retention.PERIOD_RULES},
    optional={"keep_within": st.integers(0, 30 * 86400), "min_keep": st.integers(0, 3),
              "keep_failed": st.integers(0, 2)}).map(lambda p: dict(p, allow_empty=True))


def _good(s):
    return s["status"] == "available" and not s["protected"]


@settings(max_examples=300, deadline=None)
@given(histories(), policies, st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]))
def test_properties_of_any_plan(sets, policy, tz):
    out = retention.plan(sets, dict(policy, timezone=tz), NOW)
    assert [sid for sid, _, _ in out] == [s["id"] for s in sets]
    d = {sid: keep for sid, keep, _ in out}
    for s in sets:
        if s["protected"] or s["status"] in ("creating", "deleting"):
            assert d[s["id"]]
    for inst in {s["instance_id"] for s in sets}:
        good = sorted((s for s in sets if s["instance_id"] == inst and _good(s)),
                      key=lambda s: s["created_at"], reverse=True)
        kept = [s for s in good if d[s["id"]]]
        assert len(kept) >= min(policy.get("min_keep", 1), len(good))
        if good and policy.get("min_keep", 1) >= 1:
            newest = [s for s in good if s["created_at"] == good[0]["created_at"]]
            assert any(d[s["id"]] for s in newest), "the newest good set was removed"
    # Failed sets never count: without them, every other set is decided the same.
    without = [s for s in sets if s["status"] != "failed"]
    again = {sid: keep for sid, keep, _ in retention.plan(without, dict(policy, timezone=tz),
                                                          NOW)}
    assert again == {s["id"]: d[s["id"]] for s in without}


# -- the table: each case computed by hand from the rules in the module docstring --
# A set is "ISO[ flag...]": flags failed, creating, deleting, protected, corrupt,
# label:K=V.  `expect` has one letter per set, in the order given: K kept, R removed.
# Policies default to min_keep 0 (the floor has its own rows) and time zone UTC;
# "now" is an hour after the newest set unless the case gives one.

TABLE = [
    ("keep-last 1", {"keep_last": 1}, ["2026-12-04T02", "2026-12-03T02"], "KR"),
    ("keep-last more than there are", {"keep_last": 5}, ["2026-12-04T02", "2026-12-03T02",
                                                         "2026-12-02T02"], "KKK"),
    ("keep-daily: the newest of the day", {"keep_daily": 1},
     ["2026-12-04T10", "2026-12-04T02", "2026-12-03T02"], "KRR"),
    ("keep-daily counts days that have sets, not calendar days", {"keep_daily": 3},
     ["2026-12-04T10", "2026-12-04T02", "2026-12-03T02", "2026-12-01T02"], "KRKK"),
    ("keep-hourly", {"keep_hourly": 2},
     ["2026-12-04T10:30", "2026-12-04T10:10", "2026-12-04T09:50", "2026-12-04T08:00"], "KRKR"),
    ("keep-hourly across midnight", {"keep_hourly": 2},
     ["2026-12-04T00:10", "2026-12-03T23:50"], "KK"),
    ("keep-weekly: Monday and Thursday share an ISO week", {"keep_weekly": 1},
     ["2026-12-03T02", "2026-11-30T02", "2026-11-29T02"], "KRR"),
    ("ISO week 53 spans the new year", {"keep_weekly": 2},
     ["2027-01-03T02", "2026-12-28T02", "2026-12-27T02"], "KRK"),
    ("keep-monthly", {"keep_monthly": 1}, ["2026-11-30T02", "2026-11-01T02"], "KR"),
    ("keep-monthly across the year", {"keep_monthly": 2},
     ["2027-01-02T02", "2026-12-31T02", "2026-12-01T02"], "KKR"),
    ("keep-yearly 1", {"keep_yearly": 1}, ["2026-01-01T02", "2025-12-31T02"], "KR"),
    ("keep-yearly 2", {"keep_yearly": 2}, ["2026-01-01T02", "2025-12-31T02"], "KK"),
    ("keep-last then keep-daily skips the covered day", {"keep_last": 1, "keep_daily": 2},
     ["2026-12-04T10", "2026-12-04T02", "2026-12-03T02", "2026-12-02T02", "2026-12-01T02"],
     "KRKKR"),
    ("keep-daily then keep-weekly", {"keep_daily": 1, "keep_weekly": 2},
     ["2026-12-03T10", "2026-12-03T02", "2026-12-02T02", "2026-11-29T02", "2026-11-28T02"],
     "KRRKR"),
    ("keep-weekly then keep-monthly", {"keep_weekly": 1, "keep_monthly": 2},
     ["2026-12-03T02", "2026-11-30T02", "2026-11-20T02", "2026-10-31T02"], "KRKK"),
    ("ties inside a period under keep-last and keep-daily", {"keep_last": 2, "keep_daily": 1},
     ["2026-12-04T10", "2026-12-04T09", "2026-12-04T08", "2026-12-03T02"], "KKRK"),
    ("the floor tops up with the newest", {"keep_last": 1, "min_keep": 2},
     ["2026-12-04T02", "2026-12-03T02", "2026-12-02T02"], "KKR"),
    ("the floor skips failed sets", {"keep_last": 1, "min_keep": 2},
     ["2026-12-04T02", "2026-12-03T02 failed", "2026-12-02T02", "2026-12-01T02"], "KRKR"),
    ("failed sets interleaved never count", {"keep_last": 2},
     ["2026-12-04T02 failed", "2026-12-03T02", "2026-12-02T02 failed", "2026-12-01T02"],
     "RKRK"),
    ("keep-failed keeps the newest failed", {"keep_last": 1, "keep_failed": 1},
     ["2026-12-04T02 failed", "2026-12-03T02 failed", "2026-12-02T02"], "KRK"),
    ("protected sets count toward nothing", {"keep_last": 1},
     ["2026-12-04T02 protected", "2026-12-03T02", "2026-12-02T02"], "KKR"),
    ("unfinished sets are kept and count toward nothing", {"keep_last": 1},
     ["2026-12-04T02 creating", "2026-12-03T02", "2026-12-02T02 deleting", "2026-12-01T02"],
     "KKKR"),
    ("a corrupt set is kept and counts toward nothing", {"keep_last": 1},
     ["2026-12-04T02 corrupt", "2026-12-03T02", "2026-12-02T02"], "KKR"),
    ("keep-within from the newest good set, past the failures", {"keep_within": 86400},
     ["2026-12-04T02 failed", "2026-12-01T02", "2026-11-30T03", "2026-11-29T02"], "RKKR"),
    ("keep-within after the rules", {"keep_last": 1, "keep_within": 2 * 86400},
     ["2026-12-04T02", "2026-12-03T02", "2026-12-02T01", "2026-12-01T02"], "KKRR"),
    ("a policy that keeps nothing, told so, floor 0", {"allow_empty": True},
     ["2026-12-04T02", "2026-12-03T02"], "RR"),
    ("a policy that keeps nothing keeps the floor", {"allow_empty": True, "min_keep": 1},
     ["2026-12-04T02", "2026-12-03T02"], "KR"),
    ("labels: other sets are untouched", {"keep_last": 1, "labels": {"a": "1"}},
     ["2026-12-04T02 label:a=1", "2026-12-03T02 label:b=2", "2026-12-02T02 label:a=1"], "KKR"),
    ("DST spring-forward day in Berlin", {"keep_daily": 2, "timezone": "Europe/Berlin"},
     ["2026-03-29T22:30", "2026-03-29T10:00", "2026-03-28T23:30"], "KKR"),
    ("the same sets by UTC days", {"keep_daily": 2},
     ["2026-03-29T22:30", "2026-03-29T10:00", "2026-03-28T23:30"], "KRK"),
    ("New York days", {"keep_daily": 2, "timezone": "America/New_York"},
     ["2026-12-04T03", "2026-12-03T10", "2026-12-02T10"], "KRK"),
    ("a set stamped in the future counts as now", {"keep_last": 1, "now": "2026-12-04T12"},
     ["2026-12-05T02", "2026-12-04T02"], "KR"),
]


def _table_set(spec):
    when, *flags = spec.split()
    status = next((f for f in flags if f in ("failed", "creating", "deleting")), "available")
    labels = dict(f[6:].split("=") for f in flags if f.startswith("label:"))
    doc = _set(datetime.datetime.fromisoformat(when).replace(tzinfo=UTC), status=status,
               labels=labels, protected="protected" in flags)
    return dict(doc, name="tampered") if "corrupt" in flags else doc


@pytest.mark.parametrize("name,policy,specs,expect", TABLE, ids=[c[0] for c in TABLE])
def test_the_table(name, policy, specs, expect):
    sets = [_table_set(s) for s in specs]
    policy = dict(policy)
    now = policy.pop("now", None)
    now = (datetime.datetime.fromisoformat(now).replace(tzinfo=UTC) if now else
           max(datetime.datetime.fromisoformat(s.split()[0]) for s in specs)
           .replace(tzinfo=UTC) + datetime.timedelta(hours=1))
    policy.setdefault("min_keep", 0)
    policy.setdefault("timezone", "UTC")
    got = "".join("K" if keep else "R" for _, keep, _ in retention.plan(sets, policy, now))
    assert got == expect, [r for _, _, r in retention.plan(sets, policy, now)]


def test_the_table_is_large_enough():
    assert len(TABLE) >= 30
