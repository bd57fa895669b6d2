"""The small interfaces cgsnap's tasks talk to.

Everything crossing these interfaces is a plain, JSON-serialisable dict, so
task results can be persisted by TaskFlow and flows can be resumed.

Hypervisor instance dict::

    {"id": uuid, "name": str, "active": bool,
     "disks": [{"device": "vda", "bus": "virtio", "serial": str|None,
                "source_type": "file"|"block"|"network"|"volume",
                "source": str|None, "format": str|None, "root": bool}]}

Volume dict:   {"id", "name", "status", "size_gb", "attached_to": [server ids],
                "group_id"}
Snapshot dict: {"id", "name", "status", "volume_id", "size_gb", "metadata",
                "created_at"}
"""

import abc


class Hypervisor(abc.ABC):
    """The guest side: discovery and the guest agent (freeze/thaw)."""

    uri = None

    @abc.abstractmethod
    def get_instance(self, ref):
        """Look an instance up by UUID or name; raise InstanceNotFound."""

    @abc.abstractmethod
    def ping_agent(self, instance_id):
        """Return normally if the guest agent answers; raise AgentUnreachable."""

    @abc.abstractmethod
    def freeze(self, instance_id):
        """Freeze every guest filesystem; return how many were frozen."""

    @abc.abstractmethod
    def thaw(self, instance_id):
        """Thaw the guest; return how many filesystems were thawed (0 = none frozen)."""


class VolumeBackend(abc.ABC):
    """Block storage (Cinder): volumes and their snapshots."""

    @abc.abstractmethod
    def get_volume(self, volume_id):
        """Return the volume dict; raise NotFound."""

    @abc.abstractmethod
    def get_limits(self):
        """Return {"snapshots_max", "snapshots_used", "gigabytes_max", "gigabytes_used"};
        -1 means unlimited."""

    @abc.abstractmethod
    def create_snapshot(self, volume_id, name, metadata):
        """Start a snapshot of an (attached) volume; return the snapshot dict."""

    @abc.abstractmethod
    def list_snapshots(self, set_id):
        """Every snapshot whose metadata carries ``cgsnap_set_id == set_id``
        (one API call)."""

    @abc.abstractmethod
    def delete_snapshot(self, snapshot_id):
        """Start deleting a snapshot; a snapshot that is already gone is not an error."""

    def list_all_cgsnap_snapshots(self):
        """Every snapshot carrying cgsnap metadata (for gc); optional."""
        raise NotImplementedError
