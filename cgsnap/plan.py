"""Which disks of an instance become members of a set, and under which names.

Pure functions of the discovered instance and the options, so a re-run plans
exactly the same members with exactly the same names.
"""

from cgsnap import manifest, naming
from cgsnap.drivers.libvirt_driver import is_uuid


def members(instance, set_id, options):
    """Return ``(members, skipped)`` for the manifest.

    * A disk whose ``<serial>`` is a UUID is a Cinder volume -> ``cinder-snapshot``.
    * A root disk without one is image-backed -> ``glance-image`` (checked,
      and refused unless excluded, by ``CheckRootDisk``).
    * Data disks that are not volumes are local (ephemeral/swap) and are
      skipped, as Nova's snapshot skips them; the manifest lists them.
    """
    out, skipped = [], []
    excluded = set(options.get("exclude_volumes") or ())
    for disk in instance["disks"]:
        volume_id = disk["serial"] if is_uuid(disk["serial"]) else None
        role = naming.ROLE_ROOT if disk["root"] else naming.ROLE_VOLUME
        if role == naming.ROLE_ROOT and options.get("exclude_root"):
            continue
        if role == naming.ROLE_VOLUME:
            if not options.get("all_volumes") or volume_id in excluded:
                continue
            if volume_id is None and options.get("local_disks") != "qcow2":
                skipped.append({"device": disk["device"], "reason": "local disk, not a volume"})
                continue
        if volume_id:
            kind = manifest.KIND_CINDER_SNAPSHOT
        elif options.get("local_disks") == "qcow2":
            kind = manifest.KIND_LOCAL_QCOW2
        else:
            kind = manifest.KIND_GLANCE_IMAGE
        out.append({
            "role": role,
            "device": disk["device"],
            "kind": kind,
            "volume_id": volume_id,
            "source_path": None if volume_id else disk["source"],
            "snapshot_id": None,
            "image_id": None,
            "path": None,
            "name": naming.member_name(instance["id"], set_id, role, disk["device"]),
            "status": "planned",
            "size_gb": None,
        })
    return out, skipped
