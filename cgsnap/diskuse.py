"""Which files the guests on this host run on; refuse to delete any of them.

cgsnap deletes files of its own (overlays, local copies, memory images, set
directories) in reverts, ``recover``, ``delete`` and ``gc``.  A guest may
still run on one of them: a block commit back to the original file that
failed leaves the disk on an overlay inside the set directory, and deleting
that overlay loses every write since the cut at the guest's next restart.
So before anything under ``local_dir`` is deleted, every disk of every domain
of the configured libvirt URI (running and shut off) is listed with its whole
chain, and the delete is refused, naming the domain and the disk, when any of
those files lies in what would be deleted.

The chain comes from ``<backingStore>`` in the domain XML; where libvirt does
not report it (the persistent definition, or an old libvirt), from
``qemu-img info --backing-chain -U``.  When the domains cannot be listed at
all the delete is refused too: unknown means in use.

Used by gc, the delete flow, the create flow's reverts and ``recover``; it
sits below the tasks and calls only the hypervisor driver.
"""

import json
import os
import shutil
import subprocess

from oslo_log import log as logging

from cgsnap import drivers as drivers_mod
from cgsnap import exception

LOG = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT_S = 30.0


class InUse(exception.CleanupIncomplete):
    """A file cgsnap would delete is a disk (or part of a disk's chain) of a
    domain on this host; nothing was deleted (exit code 10)."""


def _backing_chain(path):
    """Files of ``path``'s backing chain (``path`` included) per qemu-img."""
    try:
        proc = subprocess.run(["qemu-img", "info", "--backing-chain", "-U", "--output=json",
                               path], capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InUse(f"cannot read the backing chain of {path}: {e}") from None
    if proc.returncode != 0:
        if not os.path.exists(path):
            return [path]  # a disk whose file is gone uses nothing else
        raise InUse(f"cannot read the backing chain of {path}: "
                    f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    info = json.loads(proc.stdout or "[]")
    if isinstance(info, dict):
        info = [info]
    files = [path]
    for layer in info:
        for key in ("filename", "full-backing-filename", "backing-filename"):
            name = layer.get(key)
            if name and "://" not in name and name not in files:
                if key == "backing-filename" and not os.path.isabs(name):
                    name = os.path.join(os.path.dirname(layer.get("filename") or path), name)
                files.append(name)
    return files


def disk_users(hypervisor=None):
    """``[{"domain", "device", "path"}]``: every file of every disk chain of
    every domain on this host.  Raises :class:`InUse` if that cannot be known."""
    hyp = hypervisor or drivers_mod.get().hypervisor
    last = None
    for _attempt in range(2):  # libvirtd may be restarting: try once more
        try:
            disks = hyp.disk_users()
            break
        except Exception as e:  # noqa: BLE001 - any failure means "unknown"
            last = e
    else:
        raise InUse(f"cannot list the domains of {hyp.uri} to check that no guest uses the "
                    f"files (nothing was deleted): {last}")
    out = []
    for disk in disks:
        files = list(disk["files"])
        if not disk["chain_known"] and os.path.isfile(files[0]):
            files = _backing_chain(files[0])
        for path in files:
            out.append({"domain": disk["domain"], "device": disk["device"], "path": path})
    return out


def _real(path):
    return os.path.realpath(os.path.abspath(path))


def users_of(path, users):
    """The entries of ``users`` whose file is ``path`` or lies under it."""
    target = _real(path)
    return [u for u in users if os.path.isabs(u["path"])  # not a network volume's name
            and (_real(u["path"]) == target or _real(u["path"]).startswith(target + os.sep))]


def check_unused(path, users=None, hypervisor=None):
    """Raise :class:`InUse` naming the domain and disk if a guest uses
    ``path`` or anything under it."""
    if users is None:
        users = disk_users(hypervisor)
    hits = users_of(path, users)
    if hits:
        named = ", ".join(sorted({f"domain {u['domain']} disk {u['device']} ({u['path']})"
                                  for u in hits}))
        raise InUse(f"refusing to delete {path}: it is still in use by {named}; put the disk "
                    "back on its original file first (cgsnap recover, or virsh blockcommit "
                    "--active --pivot), then retry")


def remove_tree(path, users=None, hypervisor=None):
    """Delete the directory ``path`` unless a guest uses anything in it."""
    if not os.path.lexists(path):
        return
    check_unused(path, users, hypervisor)
    shutil.rmtree(path)


def remove_file(path, users=None, hypervisor=None):
    """Delete the file ``path`` unless a guest uses it; a missing file is fine."""
    if not os.path.lexists(path):
        return
    check_unused(path, users, hypervisor)
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
