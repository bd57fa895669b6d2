"""Which disks of an instance become members of a set, and under which names.

Pure functions of the discovered instance and the options, so a re-run plans
exactly the same members with exactly the same names.
"""

from cgsnap import manifest, naming
from cgsnap.drivers.libvirt_driver import is_uuid

LOCAL_SKIPPED = "local disk, not a volume"


def members(instance, set_id, options):
    """Return ``(members, skipped)`` for the manifest.

    * A disk whose ``<serial>`` is a UUID is a Cinder volume -> ``cinder-snapshot``.
    * A root disk without one is image-backed -> ``glance-image`` (checked,
      and refused unless excluded, by ``CheckRootDisk``).
    * Data disks that are not volumes are local (ephemeral/swap) and are
      skipped, as Nova's snapshot skips them; the manifest lists them.
    * SCSI passthrough disks (``device='lun'``) are never captured: a
      disk-only snapshot cannot take them and, without a volume serial,
      nothing names the volume behind them.  They are listed too, with the
      reason, rather than refused: a host LUN has no id that
      ``--exclude-volume`` could name, so refusing would make such an
      instance impossible to snapshot.
    """
    out, skipped = [], []
    for lun in instance.get("luns") or ():
        what = (f"volume {lun['serial']}, " if is_uuid(lun["serial"]) else "")
        skipped.append({"device": lun["device"],
                        "reason": f"device='lun' (SCSI passthrough, {what}not captured: "
                                  "cgsnap snapshots only device='disk' disks)"})
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
                skipped.append({"device": disk["device"], "reason": LOCAL_SKIPPED})
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


def nothing_captured(manifest, options, instance):
    """A one-line reason when the planned set has no member at all, else None
    (refused before the freeze: a cron job must not report success for a set
    that captured nothing)."""
    if manifest["members"]:
        return None
    parts, hints = [], []
    if manifest.get("root_excluded"):
        parts.append("the root disk is excluded (--exclude-root)")
    local = [d["device"] for d in manifest.get("skipped_disks") or ()
             if d["reason"] == LOCAL_SKIPPED]
    others = [d["device"] for d in manifest.get("skipped_disks") or ()
              if d["reason"] != LOCAL_SKIPPED]
    if local:
        parts.append(f"disks {', '.join(local)} are file-backed and skipped")
        hints.append("set '[snapshot] local_disks = qcow2' to capture file-backed disks")
    if others:
        parts.append(f"disks {', '.join(others)} cannot be captured (see skipped_disks)")
    if manifest.get("excluded_volumes"):
        parts.append(f"volumes {', '.join(manifest['excluded_volumes'])} are excluded")
    if not options.get("all_volumes") and len(instance["disks"]) > 1:
        parts.append("data disks are left out without --all-volumes")
        hints.append("add --all-volumes to include the attached disks")
    if manifest.get("root_excluded"):
        hints.append("drop --exclude-root to include the root disk")
    return ("the set would capture nothing: " + "; ".join(parts or ["no disk qualifies"])
            + (" (" + ", or ".join(hints) + ")" if hints else ""))


def never_created_in(manifest, members):
    """Whether ``members`` (one backend's members of the set) can be known
    never to have been created: none carries a backend id or left the
    ``planned`` status, and no revert of the set is pending.  A delete may
    then leave out a backend this host cannot reach at all (no OpenStack
    credentials, no such service): a set refused by a pre-check on a plain
    libvirt host is deletable there.  Anything made out of band or by a
    crash is still found later by ``cgsnap gc`` (by metadata)."""
    if manifest.get("cleanup_pending"):
        return False
    return all(m.get("status") == "planned" and not m.get("snapshot_id")
               and not m.get("image_id") for m in members)
