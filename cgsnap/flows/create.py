"""The create flow: one instance-level, consistency-group snapshot set.

::

    DiscoverInstance -> RecordSet -> CheckRootDisk -> CheckVolumes -> CheckQuota
      -> ChooseVolumeCut -> CheckLocalDisks -> CheckMemory -> CheckImageStore -> CheckAgent
      -> StartThawGuard
      -> CleanupVolumeSnapshots, CleanupImages, CleanupLocalDisks   (revert-only)
      -> FreezeGuest -> SnapshotLocalDisks -> SnapshotVolumes -> ThawGuest
                                                            ^ the freeze window
      -> TagGroupSnapshotMembers -> ExportLocalDisks -> RecordMemoryImage
      -> UploadRootImage -> FinalizeSet

With ``--memory`` the guest is paused instead of frozen (libvirt cannot do
both), and the memory image is written by the same atomic snapshot call.

ChooseVolumeCut decides, before the freeze, whether the volume members are
cut by one Cinder group snapshot (they form one consistent group) or one by
one; TagGroupSnapshotMembers names a group snapshot's members after the thaw.

Everything that can refuse the operation runs before FreezeGuest.  Inside the
window there are only the snapshot creates and the wait for them.  A failure
anywhere reverts in reverse order: thaw (FreezeGuest.revert), put local disks
back and delete members (CleanupLocalDisks / CleanupVolumeSnapshots.revert),
mark the manifest failed (RecordSet.revert).

Store inputs: ``instance_ref`` (name or UUID), ``set_id``, ``options`` (dict).
"""

from taskflow.patterns import linear_flow

from cgsnap.tasks import catalog, hypervisor, image, local, volume

FLOW_NAME = "cgsnap-create"
REQUIRES = frozenset({"instance_ref", "set_id", "options"})
PROVIDES = frozenset({"instance", "manifest", "volume_sizes", "volume_groups", "shared_volumes",
                      "volume_cut_plan", "volume_cut", "local_plan", "memory_plan",
                      "memory_image", "agent", "thaw_guard", "freeze",
                      "local_cut", "volume_snapshots", "thaw", "local_copies", "root_images",
                      "result"})


def create_flow(drivers=None):
    """Build the create flow.  ``drivers`` is for tests; by default tasks use
    :func:`cgsnap.drivers.get`."""
    flow = linear_flow.Flow(FLOW_NAME)
    flow.add(
        hypervisor.DiscoverInstance(drivers),
        catalog.RecordSet(drivers),
        hypervisor.CheckRootDisk(drivers),
        volume.CheckVolumes(drivers),
        volume.CheckQuota(drivers),
        volume.ChooseVolumeCut(drivers),
        local.CheckLocalDisks(drivers),
        hypervisor.CheckMemory(drivers),
        image.CheckImageStore(drivers),
        hypervisor.CheckAgent(drivers),
        hypervisor.StartThawGuard(drivers),
        volume.CleanupVolumeSnapshots(drivers),
        image.CleanupImages(drivers),
        local.CleanupLocalDisks(drivers),
        hypervisor.FreezeGuest(drivers),
        local.SnapshotLocalDisks(drivers),
        volume.SnapshotVolumes(drivers),
        hypervisor.ThawGuest(drivers),
        volume.TagGroupSnapshotMembers(drivers),
        local.ExportLocalDisks(drivers),
        local.RecordMemoryImage(drivers),
        image.UploadRootImage(drivers),
        catalog.FinalizeSet(drivers),
    )
    return flow
