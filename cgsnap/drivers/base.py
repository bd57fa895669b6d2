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
                "created_at", "group_snapshot_id"}
Group dict:    {"id", "status", "group_type_id", "group_type_name", "volume_ids",
                "consistent": True | False | None (the type's specs are hidden)}
Group snapshot dict: {"id", "name", "status", "group_id", "created_at",
                      "metadata": {cgsnap_set_id, cgsnap_instance_id} parsed from
                      the description}
"""

import abc

from cgsnap import exception


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

    def freeze_status(self, instance_id):
        """``"frozen"`` or ``"thawed"`` as the guest agent reports it
        (``guest-fsfreeze-status``); raise InstanceNotFound when the domain is
        gone, AgentUnreachable/QuiesceFailed when the agent does not answer.
        The thaw guard disarms only on ``"thawed"``."""
        raise NotImplementedError

    def running_instances(self):
        """Every running instance of this host: ``[{"id", "name", "labels"}]``
        (``create --all-instances``)."""
        raise NotImplementedError

    def pause(self, instance_id):
        """Pause the guest (``--memory``)."""
        raise NotImplementedError

    def resume(self, instance_id):
        """Resume a paused guest; return False if it was not paused."""
        raise NotImplementedError

    def is_paused(self, instance_id):
        """Whether the guest is paused; raise InstanceNotFound when it is gone."""
        raise NotImplementedError


class VolumeBackend(abc.ABC):
    """Block storage (Cinder): volumes and their snapshots."""

    @abc.abstractmethod
    def get_volume(self, volume_id):
        """Return the volume dict; raise NotFound."""

    def get_volumes(self, volume_ids):
        """``{id: volume dict}`` for the ids that exist (missing ids are left out).
        Backends may fetch them in bulk."""
        out = {}
        for vid in volume_ids:
            try:
                out[vid] = self.get_volume(vid)
            except exception.NotFound:
                pass
        return out

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

    # -- group snapshots (optional; used when supports_groups() is true) -------------
    def supports_groups(self):
        """Whether the group calls below work on this backend."""
        return False

    def get_group(self, group_id):
        """Return the group dict; raise NotFound."""
        raise NotImplementedError

    def create_group_snapshot(self, group_id, name, description):
        """Start one snapshot of every volume in the group; return the group
        snapshot dict.  Its member snapshots are named ``name``."""
        raise NotImplementedError

    def get_group_snapshot(self, group_snapshot_id):
        """Return the group snapshot dict; raise NotFound."""
        raise NotImplementedError

    def list_group_snapshots(self, set_id=None):
        """Group snapshots made by cgsnap (recognised by their description),
        only those of ``set_id`` if given (one API call)."""
        raise NotImplementedError

    def list_group_snapshot_members(self, group_snapshot, set_id):
        """The snapshot dicts of one group snapshot, whether or not they were
        renamed and tagged for ``set_id`` yet."""
        raise NotImplementedError

    def tag_snapshot(self, snapshot_id, name, metadata):
        """Rename a snapshot and set its metadata (group snapshot members
        start with the group snapshot's name and no metadata)."""
        raise NotImplementedError

    def delete_group_snapshot(self, group_snapshot_id):
        """Start deleting a group snapshot and its members; gone is not an error."""
        raise NotImplementedError
