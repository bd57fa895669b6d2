"""`cgsnap create --all-volumes` end to end on real Cinder + Keystone."""

import json

import pytest

from cgsnap import exception, faults, manifest, naming

from .conftest import quiesce_failure


def test_volume_root_and_8_data_volumes_make_one_9_member_set(make_instance):
    inst = make_instance(n_data=8, name="nine")
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "--name", "nightly ✓",
                               "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "available" and doc["consistency"] == "filesystem"
    assert doc["name"] == "nightly ✓"
    assert len(doc["members"]) == 9
    assert [m["role"] for m in doc["members"]].count("root") == 1
    assert doc["freeze"]["window_s"] > 0 and doc["freeze"]["filesystems_frozen"] == 2
    assert inst.frozen_count() == 0

    snaps = {s.id: s for s in inst.cinder_snapshots(doc["id"])}
    assert len(snaps) == 9
    for m in doc["members"]:
        s = snaps[m["snapshot_id"]]
        assert s.status == "available" and m["status"] == "available"
        assert s.name == m["name"]
        parsed = naming.parse_member_name(s.name)
        assert parsed.set_short == doc["id"][:8] and parsed.device == m["device"]
        assert s.metadata["cgsnap_set_id"] == doc["id"]
        assert s.metadata["cgsnap_instance_id"] == inst.id
        assert s.metadata["cgsnap_role"] == m["role"]
        assert s.metadata["cgsnap_device"] == m["device"]
        assert s.metadata["cgsnap_schema_version"] == str(manifest.SCHEMA_VERSION)
        assert s.volume_id == m["volume_id"]

    rc, out, _ = inst.cgsnap("show", doc["id"], "-f", "json")
    assert rc == 0
    shown = json.loads(out)
    assert shown["checksum"] == manifest.compute_checksum(shown) == doc["checksum"]
    rc, out, _ = inst.cgsnap("list", "-f", "json")
    assert [row["id"] for row in json.loads(out)] == [doc["id"]]

    rc, out, err = inst.cgsnap("delete", doc["id"])
    assert rc == 0, err
    assert inst.cinder_snapshots(doc["id"]) == []
    rc, _, err = inst.cgsnap("show", doc["id"])
    assert rc == exception.EXIT_NOT_FOUND and err.count("\n") == 1


def _assert_clean_failure(inst, rc, err, exit_code, reason):
    """The contract of every failure: thawed, no orphans, failed manifest, one line."""
    assert rc == exit_code, err
    assert err.count("\n") == 1 and err.startswith("cgsnap: error: "), err
    assert "Traceback" not in err
    assert inst.frozen_count() == 0
    rc2, out, _ = inst.cgsnap("list", "-f", "json")
    sets = json.loads(out)
    assert len(sets) == 1
    doc = json.loads(inst.cgsnap("show", sets[0]["id"], "-f", "json")[1])
    assert doc["status"] == "failed"
    assert reason in doc["status_reason"]
    assert inst.cinder_snapshots(doc["id"]) == []
    return doc


def test_quota_exhausted_partway_through(make_instance, lab):
    inst = make_instance(n_data=5, name="quota")
    used = lab.user.limits.get()
    used = {a.name: a.value for a in used.absolute}["totalSnapshotsUsed"]
    # The pre-check sees plenty of quota; just before the creates Cinder's quota
    # drops to leave room for only 2 of the 6 snapshots.
    faults.arm("task.SnapshotVolumes", lambda _p: lab.set_quota(snapshots=used + 2))
    try:
        rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    finally:
        lab.set_quota(snapshots=1000)
    _assert_clean_failure(inst, rc, err, exception.EXIT_SNAPSHOT_FAILED, "quota")


def test_quota_answer_is_reused_but_a_refusal_asks_cinder_again(make_instance, lab,
                                                                monkeypatch):
    """A long-lived process asks Cinder's limits once per
    [snapshot] quota_cache_seconds; a set the cached answer cannot fit is
    checked against a fresh answer, and refused before the freeze."""
    from cgsnap.drivers import cinder
    asked = []
    real = cinder.CinderBackend.get_limits
    monkeypatch.setattr(cinder.CinderBackend, "get_limits",
                        lambda self: asked.append(1) or real(self))
    inst = make_instance(n_data=2, name="qcache")
    used = {a.name: a.value for a in lab.user.limits.get().absolute}["totalSnapshotsUsed"]
    lab.set_quota(snapshots=used + 7)  # room for two sets of 3 and one snapshot more
    try:
        first = json.loads(inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")[1])
        second = json.loads(inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")[1])
        assert (first["status"], second["status"]) == ("available", "available")
        assert len(asked) == 1  # the second set was accepted by the first answer
        rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    finally:
        lab.set_quota(snapshots=1000)
    assert len(asked) == 2  # the cached view could not fit it: Cinder was asked again
    doc = _assert_clean_failure_among(inst, rc, err, {first["id"], second["id"]})
    assert "snapshots quota too low: this set needs 3, 1 of" in doc["status_reason"]


def _assert_clean_failure_among(inst, rc, err, kept):
    """A refused set next to sets that must stay: thawed, one line, nothing of
    the refused set left in Cinder, the others untouched."""
    assert rc == exception.EXIT_REFUSED, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert inst.frozen_count() == 0
    sets = json.loads(inst.cgsnap("list", "-f", "json")[1])
    failed = [s for s in sets if s["id"] not in kept]
    assert len(failed) == 1 and {s["id"] for s in sets} >= kept
    doc = json.loads(inst.cgsnap("show", failed[0]["id"], "-f", "json")[1])
    assert doc["status"] == "failed" and inst.cinder_snapshots(doc["id"]) == []
    for sid in kept:
        assert len(inst.cinder_snapshots(sid)) == 3
    return doc


class _Requests:
    """The Cinder requests this process sends, as ``METHOD /path`` (ids folded)."""

    def __init__(self, monkeypatch):
        import re

        from keystoneauth1 import session
        self.sent = []
        real = session.Session.request

        def request(sess, url, method, *args, **kwargs):
            path = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|/v3/[0-9a-f]{32}", "", url.split("?")[0])
            self.sent.append(f"{method} {path.split(':18776')[-1]}")
            return real(sess, url, method, *args, **kwargs)
        monkeypatch.setattr(session.Session, "request", request)

    def count(self, what):
        return self.sent.count(what)


def test_member_volumes_are_checked_with_one_list_call_where_cinder_allows_it(
        make_instance, monkeypatch):
    """The dev cloud enables the ``id`` volume filter: the pre-freeze check
    of 4 volumes is one list call, not 4 GETs."""
    inst = make_instance(n_data=3, name="idfilter")
    sent = _Requests(monkeypatch)
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    assert len(json.loads(out)["members"]) == 4
    assert sent.count("GET /volumes/") == 0, sent.sent
    assert sent.count("GET /volumes/detail") == 1, sent.sent


@pytest.mark.parametrize("why", ["filter not enabled", "resource filters call fails"])
def test_without_the_id_filter_volumes_are_fetched_one_by_one(make_instance, lab,
                                                             monkeypatch, why):
    from cgsnap.drivers import cinder
    if why == "filter not enabled":
        monkeypatch.setattr(cinder.CinderBackend, "filters_volumes_by_id", lambda self: False)
    else:
        from cinderclient.v3 import resource_filters

        def fail(*_a, **_k):
            raise RuntimeError("no resource filters here")
        monkeypatch.setattr(resource_filters.ResourceFilterManager, "list", fail)
    inst = make_instance(n_data=2, name="nofilter")
    sent = _Requests(monkeypatch)
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    assert sent.count("GET /volumes/") == 3 and sent.count("GET /volumes/detail") == 0
    # The refusals are the same on this path.
    lab.reset_status(inst.volume_ids[1], "error")
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    assert rc == exception.EXIT_REFUSED and "'error'" in err, err
    assert inst.frozen_count() == 0


def test_volume_attached_to_another_instance(make_instance, lab):
    inst = make_instance(n_data=2, name="owner")
    stolen = inst.volume_ids[1]
    lab.detach_all(stolen)
    lab.attach(stolen, "5f0e0c65-0000-4000-8000-000000000001")
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    doc = _assert_clean_failure(inst, rc, err, exception.EXIT_REFUSED, stolen)
    assert "5f0e0c65-0000-4000-8000-000000000001" in doc["status_reason"]
    assert stolen in err


def test_volume_in_error(make_instance, lab):
    inst = make_instance(n_data=2, name="errvol")
    lab.reset_status(inst.volume_ids[0], "error")
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    _assert_clean_failure(inst, rc, err, exception.EXIT_REFUSED, "'error'")


@pytest.mark.parametrize("flag", ["--require-quiesce", "--allow-crash-consistent"])
def test_agent_fails_to_freeze(make_instance, flag):
    inst = make_instance(n_data=2, name="nofreeze")
    faults.arm("hypervisor.freeze", quiesce_failure)
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name, flag)
    _assert_clean_failure(inst, rc, err, exception.EXIT_QUIESCE, "freeze failed")


def test_failure_after_the_creates_deletes_real_snapshots(make_instance):
    inst = make_instance(n_data=3, name="late")
    faults.arm("task.ThawGuest", "raise@1")
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    _assert_clean_failure(inst, rc, err, exception.EXIT_SNAPSHOT_FAILED, "task.ThawGuest")


def test_unreachable_agent_with_allow_crash_consistent_is_recorded(make_instance):
    inst = make_instance(n_data=1, name="crash")
    faults.arm("hypervisor.ping_agent", lambda _p: (_ for _ in ()).throw(
        exception.AgentUnreachable("guest agent ping failed on crash: not connected")))
    rc, _, err = inst.cgsnap("create", "--all-volumes", inst.name)
    assert rc == exception.EXIT_QUIESCE and "--allow-crash-consistent" in err
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name,
                               "--allow-crash-consistent", "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["consistency"] == "crash" and doc["freeze"]["agent"] == "unreachable"
    assert len(inst.cinder_snapshots(doc["id"])) == 2
    assert inst.cgsnap("delete", doc["id"])[0] == 0
