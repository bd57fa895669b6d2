"""Deleting a set's Cinder snapshots: shared by the create flow's revert
(:class:`cgsnap.tasks.volume.CleanupVolumeSnapshots`), the delete flow,
``cgsnap recover`` and gc.  It lives below the tasks (layering: tasks and
recovery call it, it calls only drivers and :mod:`cgsnap.wait`).
"""

import time

from oslo_log import log as logging

from cgsnap import exception, wait

LOG = logging.getLogger(__name__)

# How long to keep watching after a delete for snapshots that appear late: a
# create sent before a crash (or a revert) may be finished by Cinder after it.
SETTLE_S = 3.0


def delete_set_snapshots(volumes, set_id, deadline_s):
    """Delete all snapshots of a set and wait until they are gone.

    A group snapshot of the set (found by its description) goes first: its
    members cannot be deleted one by one.  Snapshots still ``creating``
    cannot be deleted in Cinder, so wait for them to settle first.  Returns
    how many snapshots were deleted (a group snapshot counts once).
    """
    deadline = time.monotonic() + deadline_s
    remaining = lambda: max(deadline - time.monotonic(), 0.0)  # noqa: E731
    groups = 0
    if volumes.supports_groups():
        groups = _delete_and_wait(lambda: volumes.list_group_snapshots(set_id),
                                  volumes.delete_group_snapshot, remaining,
                                  f"the group snapshot of set {set_id}")
    return groups + _delete_and_wait(lambda: volumes.list_snapshots(set_id),
                                     volumes.delete_snapshot, remaining,
                                     f"snapshots of set {set_id}")


def _delete_and_wait(list_fn, delete_fn, remaining, what):
    """Let everything ``list_fn`` returns settle, delete it, wait until it is
    gone; raise CleanupIncomplete for what is stuck in ``error_deleting``."""
    found = wait.poll(list_fn, lambda xs: not any(x["status"] == "creating" for x in xs),
                      remaining(), what=f"{what} to settle")
    for item in found:
        if item["status"] not in ("deleting", "deleted"):
            delete_fn(item["id"])
    if found:
        wait.poll(list_fn, lambda xs: not [x for x in xs if x["status"] != "error_deleting"],
                  remaining(), initial=0.1, what=f"deletion of {what}")
        stuck = [x["id"] for x in list_fn()]
        if stuck:
            raise exception.CleanupIncomplete(
                f"{what} stuck in error_deleting: {', '.join(stuck)}")
    return len(found)


def admin_reset_command(snapshot_id):
    """What an admin runs so that a snapshot stuck in ``creating`` can be deleted."""
    return f"openstack volume snapshot set --state error {snapshot_id}"


def stuck_advice(snapshot_ids):
    """One sentence naming snapshots stuck in ``creating`` and the admin's commands."""
    return (f"{len(snapshot_ids)} snapshot(s) stuck in 'creating' (a member user cannot "
            "delete them; cinder-api probably died mid-request): an admin must run "
            + "; ".join(f"'{admin_reset_command(i)}'" for i in snapshot_ids)
            + ", then run 'cgsnap recover' again")


def delete_volume_members(volumes, set_id, deadline_s=None, settle_s=SETTLE_S):
    """Delete the set's snapshots, then watch for ``settle_s``: creates that
    were in flight when the create died or was reverted may make Cinder
    finish snapshots after the first delete.  Returns how many were deleted.
    ``deadline_s`` defaults to ``[snapshot] cleanup_timeout``.

    Snapshots still ``creating`` after the deadline are stuck (cinder-api
    died mid-request): the others are deleted, and CleanupIncomplete names
    the stuck ones and the admin's command."""
    if deadline_s is None:
        from cgsnap.conf import CONF
        deadline_s = CONF.snapshot.cleanup_timeout
    deleted = 0
    for _ in range(3):
        try:
            deleted += delete_set_snapshots(volumes, set_id, deadline_s)
        except exception.WaitTimeout:
            stuck = [s["id"] for s in volumes.list_snapshots(set_id)
                     if s["status"] == "creating"]
            if not stuck:
                raise
            _delete_all_but(volumes, set_id, stuck, deadline_s)
            raise exception.CleanupIncomplete(stuck_advice(stuck)) from None
        try:
            wait.poll(lambda: volumes.list_snapshots(set_id), bool, settle_s, 0.25, 0.5,
                      what="late snapshots")
        except exception.WaitTimeout:
            return deleted  # nothing appeared late
    raise exception.CleanupIncomplete(f"snapshots of set {set_id} keep appearing")


def _delete_all_but(volumes, set_id, keep, deadline_s):
    """Delete every snapshot of the set but ``keep`` and wait until they are gone."""
    for snap in volumes.list_snapshots(set_id):
        if snap["id"] not in keep and snap["status"] not in ("deleting", "deleted"):
            LOG.info("deleting snapshot %s of set %s", snap["id"], set_id)
            volumes.delete_snapshot(snap["id"])
    wait.poll(lambda: volumes.list_snapshots(set_id),
              lambda ss: {s["id"] for s in ss} <= set(keep),
              deadline_s, what=f"deletion of the snapshots of set {set_id}")
