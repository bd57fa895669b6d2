"""Deleting a set's Cinder snapshots: shared by the create flow's revert
(:class:`cgsnap.tasks.volume.CleanupVolumeSnapshots`), the delete flow,
``cgsnap recover`` and gc.  It lives below the tasks (layering: tasks and
recovery call it, it calls only drivers and :mod:`cgsnap.wait`).
"""

import time

from cgsnap import exception, wait

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


def delete_volume_members(volumes, set_id, deadline_s=None, settle_s=SETTLE_S):
    """Delete the set's snapshots, then watch for ``settle_s``: creates that
    were in flight when the create died or was reverted may make Cinder
    finish snapshots after the first delete.  Returns how many were deleted.
    ``deadline_s`` defaults to ``[snapshot] cleanup_timeout``."""
    if deadline_s is None:
        from cgsnap.conf import CONF
        deadline_s = CONF.snapshot.cleanup_timeout
    deleted = 0
    for _ in range(3):
        deleted += delete_set_snapshots(volumes, set_id, deadline_s)
        try:
            wait.poll(lambda: volumes.list_snapshots(set_id), bool, settle_s, 0.25, 0.5,
                      what="late snapshots")
        except exception.WaitTimeout:
            return deleted  # nothing appeared late
    raise exception.CleanupIncomplete(f"snapshots of set {set_id} keep appearing")
