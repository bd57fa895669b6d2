"""The create flow through :mod:`cgsnap.api`, on the libvirt test driver and
the in-memory volume backend: the happy path and every revert path."""

import pytest

from cgsnap import api, exception, faults, manifest


def _only_manifest(guest):
    docs = api.list_snapshot_sets(guest.id)
    assert len(docs) == 1
    return docs[0]


def test_all_volumes_makes_one_consistent_set(guest):
    doc = api.create_snapshot_set(guest.name, name="nightly", all_volumes=True)
    assert doc["status"] == "available"
    assert doc["consistency"] == "filesystem"
    assert doc["freeze"]["filesystems_frozen"] == 2  # the test driver freezes / and /boot
    assert doc["freeze"]["window_s"] > 0
    assert [m["role"] for m in doc["members"]] == ["root", "volume", "volume", "volume"]
    assert all(m["status"] == "available" and m["snapshot_id"] for m in doc["members"])
    snaps = {s["id"]: s for s in guest.backend.list_snapshots(doc["id"])}
    for m in doc["members"]:
        assert snaps[m["snapshot_id"]]["name"] == m["name"]
        assert snaps[m["snapshot_id"]]["metadata"]["cgsnap_device"] == m["device"]
    assert guest.frozen_count() == 0
    manifest.verify(api.show_snapshot_set(doc["id"]))


def test_without_all_volumes_only_the_root(guest):
    doc = api.create_snapshot_set(guest.id, all_volumes=False)
    assert [m["device"] for m in doc["members"]] == ["vda"]


def test_exclude_volume(guest):
    doc = api.create_snapshot_set(guest.name, exclude_volumes=[guest.volume_ids[1]])
    assert guest.volume_ids[1] not in [m["volume_id"] for m in doc["members"]]
    assert doc["excluded_volumes"] == [guest.volume_ids[1]]


def _assert_reverted(guest, exc_type, reason):
    doc = _only_manifest(guest)
    assert doc["status"] == "failed"
    assert reason in doc["status_reason"]
    assert guest.backend.list_snapshots(doc["id"]) == []
    assert guest.frozen_count() == 0
    return doc


def test_snapshot_error_reverts_everything(guest):
    guest.backend.fail_volume_ids.add(guest.volume_ids[2])
    with pytest.raises(exception.SnapshotFailed, match="went to 'error'"):
        api.create_snapshot_set(guest.name)
    _assert_reverted(guest, exception.SnapshotFailed, "went to 'error'")


def test_quota_exhausted_partway_reverts(make_guest):
    g = make_guest(n_volumes=3)
    # Pre-check sees room; Cinder then refuses the 3rd create.
    faults.arm("task.SnapshotVolumes", lambda _n: setattr(g.backend, "snapshot_quota", 2))
    with pytest.raises(exception.SnapshotFailed, match="quota"):
        api.create_snapshot_set(g.name)
    _assert_reverted(g, exception.SnapshotFailed, "quota")


def test_quota_precheck_refuses_before_freezing(make_guest):
    g = make_guest(n_volumes=3, snapshot_quota=3)
    with pytest.raises(exception.Refused, match="snapshots quota too low"):
        api.create_snapshot_set(g.name)
    _assert_reverted(g, exception.Refused, "quota")
    assert g.backend.calls["create"] == 0


def test_volume_attached_elsewhere_is_refused(guest):
    guest.backend.volumes[guest.volume_ids[0]]["attached_to"] = ["other-instance"]
    with pytest.raises(exception.Refused, match="attached to instance other-instance"):
        api.create_snapshot_set(guest.name)
    _assert_reverted(guest, exception.Refused, guest.volume_ids[0])


@pytest.mark.parametrize("status", ["error", "attaching", "maintenance", "available"])
def test_volume_not_in_use_is_refused(guest, status):
    guest.backend.volumes[guest.volume_ids[1]]["status"] = status
    with pytest.raises(exception.Refused, match=f"is '{status}'"):
        api.create_snapshot_set(guest.name)
    _assert_reverted(guest, exception.Refused, status)


@pytest.mark.parametrize("allow", [False, True])
def test_freeze_failure_always_fails(guest, allow):
    faults.arm("hypervisor.freeze")
    with pytest.raises(exception.InjectedFault):
        api.create_snapshot_set(guest.name, allow_crash_consistent=allow)
    _assert_reverted(guest, exception.InjectedFault, "hypervisor.freeze")
    assert guest.backend.calls["create"] == 0


def test_agent_unreachable_fails_unless_crash_consistent_allowed(guest):
    faults.arm("hypervisor.ping_agent",
               lambda _n: (_ for _ in ()).throw(exception.AgentUnreachable("no agent")))
    with pytest.raises(exception.AgentUnreachable, match="--allow-crash-consistent"):
        api.create_snapshot_set(guest.name)
    _assert_reverted(guest, exception.AgentUnreachable, "no agent")
    doc = api.create_snapshot_set(guest.name, allow_crash_consistent=True)
    assert doc["status"] == "available" and doc["consistency"] == "crash"
    assert doc["freeze"]["agent"] == "unreachable" and doc["freeze"]["window_s"] is None


@pytest.mark.parametrize("point", ["hypervisor.freeze.after", "task.SnapshotVolumes",
                                   "volume.create_snapshot.after",
                                   "task.SnapshotVolumes.created", "hypervisor.thaw",
                                   "task.ThawGuest", "task.FinalizeSet"])
def test_failure_inside_or_after_the_window_thaws_and_cleans(guest, point):
    faults.arm(point, "raise@1")  # the first hit fails; the revert's own thaw then works
    with pytest.raises(exception.InjectedFault):
        api.create_snapshot_set(guest.name)
    _assert_reverted(guest, exception.InjectedFault, point)


def test_wait_deadline_fails_and_thaws(make_guest):
    g = make_guest(n_volumes=2, latency=5.0)
    with pytest.raises(exception.WaitTimeout, match="did not finish inside the freeze window"):
        api.create_snapshot_set(g.name, timeout=0.5)
    doc = _only_manifest(g)
    assert doc["status"] == "failed" and g.frozen_count() == 0


def test_image_backed_root_refused_unless_excluded(make_guest):
    g = make_guest(n_volumes=2, root_volume=False)
    with pytest.raises(exception.Refused, match="image-backed"):
        api.create_snapshot_set(g.name)
    assert g.frozen_count() == 0
    doc = api.create_snapshot_set(g.name, exclude_root=True)
    assert doc["root_excluded"] is True
    assert [m["role"] for m in doc["members"]] == ["volume", "volume"]


def test_unknown_instance(guest):
    with pytest.raises(exception.InstanceNotFound, match="no instance 'nope'"):
        api.create_snapshot_set("nope")
    with pytest.raises(exception.InstanceNotFound):
        api.create_snapshot_set("00000000-0000-0000-0000-000000000000")


def test_second_operation_on_a_locked_instance_is_refused(guest):
    from cgsnap import lock
    with lock.instance_lock(guest.id, "test"):
        with pytest.raises(exception.Locked, match="busy"):
            api.create_snapshot_set(guest.name)


def test_idempotency_key_returns_the_existing_set(guest):
    first = api.create_snapshot_set(guest.name, idempotency_key="cron-2026-11-25")
    again = api.create_snapshot_set(guest.name, idempotency_key="cron-2026-11-25")
    assert again["id"] == first["id"]
    assert len(api.list_snapshot_sets(guest.id)) == 1


def test_delete_removes_members_and_manifest(guest):
    doc = api.create_snapshot_set(guest.name)
    api.delete_snapshot_set(doc["id"][:8])
    assert guest.backend.list_snapshots(doc["id"]) == []
    with pytest.raises(exception.SnapshotSetNotFound):
        api.show_snapshot_set(doc["id"])


def test_memory_needs_a_real_hypervisor(guest):
    with pytest.raises(exception.Refused, match="--memory needs a running guest"):
        api.create_snapshot_set(guest.name, memory=True)
    assert guest.frozen_count() == 0
    assert _only_manifest(guest)["status"] == "failed"


def test_local_disks_need_a_real_hypervisor(make_guest):
    from cgsnap.conf import CONF
    CONF.set_override("local_disks", "qcow2", group="snapshot")
    try:
        g = make_guest(n_volumes=1, root_volume=False)
        with pytest.raises(exception.Refused, match="cannot take disk-only snapshots"):
            api.create_snapshot_set(g.name)
    finally:
        CONF.clear_override("local_disks", group="snapshot")
