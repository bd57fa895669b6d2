"""The delete flow: remove every member of a set, then its manifest.

``MarkSetDeleting -> DeleteVolumeSnapshots -> DeleteImages -> DeleteLocalCopies
-> RemoveManifest``; a failure
leaves the manifest in ``error_deleting`` with the reason, and a re-run of
the delete picks up where it stopped (members are found by metadata).

Store inputs: ``set_id``.
"""

from taskflow.patterns import linear_flow

from cgsnap.tasks import catalog, image, local, volume

FLOW_NAME = "cgsnap-delete"
REQUIRES = frozenset({"set_id"})
PROVIDES = frozenset({"manifest", "deleted_snapshots"})


def delete_flow(drivers=None):
    flow = linear_flow.Flow(FLOW_NAME)
    flow.add(
        catalog.MarkSetDeleting(drivers),
        volume.DeleteVolumeSnapshots(drivers),
        image.DeleteImages(drivers),
        local.DeleteLocalCopies(drivers),
        catalog.RemoveManifest(drivers),
    )
    return flow
