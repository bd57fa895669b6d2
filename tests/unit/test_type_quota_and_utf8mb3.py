"""Issue 11 findings 2 and 3 at unit level: names made utf8mb3-safe for
Cinder/Glance fields, and the quota pre-check per volume type."""

import pytest

from cgsnap import exception, naming, quota
from cgsnap.drivers import cinder


@pytest.fixture(autouse=True)
def _forget():
    quota.forget()
    yield
    quota.forget()


@pytest.mark.parametrize("text", ["plain", "快照 ✓ ünïcødé", "a\U0001f600b", "\U0001f4be" * 40,
                                  "x" * 300, "\U00010000\uffff"])
def test_utf8mb3_safe_has_no_4_byte_character_and_fits(text):
    out = naming.utf8mb3_safe(text)
    assert all(len(ch.encode("utf-8")) <= 3 for ch in out)
    assert len(out) <= naming.MAX_NAME_LEN
    if all(ord(ch) <= 0xFFFF for ch in text):
        assert out == text[:naming.MAX_NAME_LEN]


def test_utf8mb3_safe_escapes_and_never_cuts_an_escape():
    assert naming.utf8mb3_safe("a\U0001f600b") == "a\\U0001f600b"
    out = naming.utf8mb3_safe("\U0001f600" * 30, limit=25)
    assert out == "\\U0001f600" * 2


def test_member_metadata_carries_the_safe_name():
    meta = naming.member_metadata("0" * 32, "1" * 32, "root", "vda", 1, "n \U0001f600")
    assert meta[naming.META_SET_NAME] == "n \\U0001f600"


class TypedLimits:
    """A volume backend whose answer has per-type limits (as Cinder's quota-set detail)."""

    def __init__(self, types, snapshots_max=100):
        self.answer = {"snapshots_max": snapshots_max, "snapshots_used": 0,
                       "gigabytes_max": -1, "gigabytes_used": 0, "types": types}
        self.calls = 0

    def get_limits(self):
        self.calls += 1
        return dict(self.answer)


def need(**per_type):
    return lambda: {t: {"snapshots": n, "gigabytes": n} for t, n in per_type.items()}


def test_per_type_snapshot_limit_refuses_naming_the_type():
    b = TypedLimits({"fast": {"snapshots_max": 5, "snapshots_used": 0},
                     "slow": {"snapshots_max": -1, "snapshots_used": 0}})
    with pytest.raises(exception.Refused, match=r"snapshots quota for volume type fast too low: "
                                                r"this set needs 8, 5 of 5 left"):
        quota.check(b, 8, 8, cache_seconds=0, by_type=need(fast=8))
    assert quota.check(b, 8, 8, cache_seconds=0, by_type=need(slow=8)) == "fresh"


def test_per_type_need_is_asked_only_when_a_type_limit_is_finite():
    asked = []
    b = TypedLimits({"fast": {"snapshots_max": -1, "gigabytes_max": -1}})
    quota.check(b, 3, 3, cache_seconds=0, by_type=lambda: asked.append(1) or {})
    assert asked == []


def test_cached_answer_counts_per_type_claims(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(quota.time, "monotonic", lambda: now[0])
    b = TypedLimits({"fast": {"snapshots_max": 10, "snapshots_used": 0}})
    assert quota.check(b, 6, 6, cache_seconds=10, by_type=need(fast=6)) == "fresh"
    b.answer["types"] = {"fast": {"snapshots_max": 10, "snapshots_used": 6}}
    with pytest.raises(exception.Refused, match="volume type fast"):
        quota.check(b, 6, 6, cache_seconds=10, by_type=need(fast=6))
    assert b.calls == 2  # the cached view (4 left) did not accept: asked again


def test_quota_view_of_cinder_quota_set_detail():
    detail = {"snapshots": {"limit": 200, "in_use": 3, "reserved": 1},
              "gigabytes": {"limit": 5000, "in_use": 10, "reserved": 0},
              "backup_gigabytes": {"limit": 5000, "in_use": 0, "reserved": 0},
              "per_volume_gigabytes": {"limit": -1, "in_use": 0, "reserved": 0},
              "snapshots___DEFAULT__": {"limit": 5, "in_use": 2, "reserved": 0},
              "gigabytes___DEFAULT__": {"limit": -1, "in_use": 4, "reserved": 0},
              "volumes___DEFAULT__": {"limit": -1, "in_use": 4, "reserved": 0},
              "id": "p"}
    view = cinder._quota_view(detail)
    assert (view["snapshots_max"], view["snapshots_used"]) == (200, 4)
    assert view["types"] == {"__DEFAULT__": {"snapshots_max": 5, "snapshots_used": 2,
                                             "gigabytes_max": -1, "gigabytes_used": 4}}


class _Stub:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _backend(quotas_get):
    b = object.__new__(cinder.CinderBackend)
    b._quota_detail, b._types = True, {}
    limits = _Stub(absolute=[_Stub(name="maxTotalSnapshots", value=10),
                             _Stub(name="totalSnapshotsUsed", value=2)])
    b.client = _Stub(quotas=_Stub(get=quotas_get), limits=_Stub(get=lambda: limits),
                     client=_Stub(get_project_id=lambda: "p"))
    return b


def test_limits_fall_back_to_the_limits_call_where_the_detail_is_forbidden():
    from cinderclient import exceptions as cinder_exc
    calls = []

    def forbidden(project_id, usage=False):
        calls.append(project_id)
        raise cinder_exc.Forbidden(403)
    b = _backend(forbidden)
    for _ in range(2):
        got = b.get_limits()
        assert (got["snapshots_max"], got["snapshots_used"]) == (10, 2) and "types" not in got
    assert calls == ["p"]  # asked once; later answers come from the limits call


def test_limits_come_from_the_detail_where_readable():
    detail = {"snapshots": {"limit": 9, "in_use": 1, "reserved": 0},
              "snapshots_fake": {"limit": 5, "in_use": 0, "reserved": 0}}
    b = _backend(lambda project_id, usage=False: _Stub(_info=detail))
    got = b.get_limits()
    assert got["snapshots_max"] == 9 and got["types"]["fake"]["snapshots_max"] == 5
