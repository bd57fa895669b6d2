"""Tasks that touch the guest through the hypervisor driver."""

import os
import shutil
import time

from oslo_log import log as logging

from cgsnap import drivers as drivers_mod
from cgsnap import exception, guard, plan, state
from cgsnap import manifest as manifest_mod
from cgsnap.conf import CONF
from cgsnap.tasks.base import CgsnapTask, is_failure

LOG = logging.getLogger(__name__)


class DiscoverInstance(CgsnapTask):
    """Read the instance and its disks from the domain XML."""

    default_provides = "instance"

    def execute(self, instance_ref):
        self.fault_point()
        hyp = self.drivers.hypervisor
        instance = hyp.get_instance(instance_ref)
        if not instance["disks"]:
            raise exception.Refused(f"instance {instance['name']} has no disks")
        if hasattr(hyp, "domain_facts"):  # what a restore or a clone will need
            instance["machine"] = hyp.domain_facts(instance["id"])
        return instance


class CheckRootDisk(CgsnapTask):
    """Before anything is frozen or created, refuse a plan that cannot work:

    * a set that would capture nothing (every disk excluded or skipped);
    * an image-backed root when the hypervisor cannot take the disk-only
      snapshot its capture to Glance needs (libvirt's test driver), or when
      this host has no Glance to upload it to (a plain libvirt host: no
      OpenStack credentials) - the message says what to do instead;
    * an encrypted file-backed disk: its overlay and its copy would be
      written unencrypted.

    ``--exclude-root`` skips the root."""

    def execute(self, manifest, instance, options):
        self.fault_point()
        empty = plan.nothing_captured(manifest, options, instance)
        if empty:
            raise exception.Refused(empty)
        hyp = self.drivers.hypervisor
        for member in manifest["members"]:
            if member["role"] != "root" or member["kind"] != manifest_mod.KIND_GLANCE_IMAGE:
                continue
            if not hyp.supports_disk_snapshots():
                raise exception.Refused(
                    f"root disk {member['device']} of instance {manifest['instance_name']} is "
                    f"image-backed and {hyp.uri} cannot take the disk-only "
                    "snapshot needed to capture it: use --exclude-root to snapshot only the "
                    "volumes")
            why = drivers_mod.unavailable("images", self.drivers)
            if why:
                raise exception.Refused(
                    f"root disk {member['device']} of instance {manifest['instance_name']} is "
                    "file-backed with no Cinder volume serial, so it would be uploaded to "
                    f"Glance, but {why}: on a host without OpenStack set "
                    "'[snapshot] local_disks = qcow2' to keep local qcow2 copies (or use "
                    "--exclude-root); with OpenStack, give its credentials")
        self._refuse_encrypted(manifest, instance)

    @staticmethod
    def _refuse_encrypted(manifest, instance):
        disks = {d["device"]: d for d in instance["disks"]}
        for member in manifest["members"]:
            if member["kind"] not in (manifest_mod.KIND_LOCAL_QCOW2,
                                      manifest_mod.KIND_GLANCE_IMAGE):
                continue
            disk = disks.get(member["device"]) or {}
            how = (f"<encryption format='{disk['encryption']}'>" if disk.get("encryption")
                   else image_encryption(disk.get("source"), disk.get("format")))
            if how:
                raise exception.Refused(
                    f"disk {member['device']} of instance {manifest['instance_name']} is "
                    f"encrypted ({how}): its overlay and copy would be written unencrypted; "
                    "cgsnap does not capture encrypted local disks (exclude it, or keep that "
                    "data on a Cinder volume)")


_QCOW2_MAGIC = b"QFI\xfb"


def image_encryption(path, fmt=None):
    """The encryption a disk image carries in its own header, or None: a qcow2
    header's crypt_method (1 AES, 2 LUKS), or a LUKS image that QEMU opens
    (format ``luks``).  A raw disk whose *guest* encrypts its contents is
    fine (the overlay holds ciphertext) and is not looked into.  An
    unreadable file is left to the later checks."""
    if fmt == "luks":
        return "LUKS"
    if not path or fmt not in (None, "qcow2"):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(36)
    except OSError:
        return None
    if head.startswith(_QCOW2_MAGIC) and len(head) >= 36:
        method = int.from_bytes(head[32:36], "big")
        return {0: None, 1: "qcow2 AES"}.get(method, "qcow2 LUKS")
    return None


class CheckAgent(CgsnapTask):
    """Make sure the guest agent answers before we commit to freezing."""

    default_provides = "agent"

    def execute(self, instance, options):
        self.fault_point()
        if options.get("memory"):
            # The guest is paused, not quiesced: libvirt cannot combine both.
            return {"reachable": False, "error": None, "skipped": "memory"}
        if not instance["active"]:
            if options.get("allow_crash_consistent"):
                return {"reachable": False, "error": "instance is not running"}
            raise exception.Refused(
                f"instance {instance['name']} is not running, so it cannot be quiesced; "
                "use --allow-crash-consistent to snapshot it anyway")
        try:
            self.drivers.hypervisor.ping_agent(instance["id"])
        except exception.AgentUnreachable as e:
            if options.get("allow_crash_consistent"):
                LOG.warning("%s; taking a crash-consistent set as allowed", e)
                return {"reachable": False, "error": str(e)}
            raise exception.AgentUnreachable(
                f"{e} (use --allow-crash-consistent to snapshot without a freeze)") from None
        return {"reachable": True, "error": None}


class CheckMemory(CgsnapTask):
    """``--memory``: the hypervisor can write an external memory image, and
    the set directory has room for it.  Records what a restore must match."""

    default_provides = "memory_plan"

    def execute(self, set_id, instance, options):
        self.fault_point()
        if not options.get("memory"):
            return {}
        hyp = self.drivers.hypervisor
        if not hyp.supports_disk_snapshots() or not instance["active"]:
            raise exception.Refused(
                f"--memory needs a running guest on a real hypervisor ({hyp.uri})")
        from cgsnap.tasks import local
        out_dir = local.ensure_set_dir(set_id)
        facts = hyp.machine_facts(instance["id"])
        need = facts["memory_mib"] << 20
        free = shutil.disk_usage(out_dir).free
        if free < need:
            raise exception.Refused(f"{out_dir} has {free >> 20} MiB free; the memory image "
                                    f"needs up to {need >> 20} MiB")
        return dict(facts, path=os.path.join(out_dir, "memory.img"))

    def revert(self, set_id, **kwargs):
        from cgsnap.tasks import local
        local.remove_empty_set_dir(set_id)  # made above; a later pre-check failed


class StartThawGuard(CgsnapTask):
    """Before the freeze (or the pause, with ``--memory``): start the
    out-of-process thaw guard (see :mod:`cgsnap.guard`), so no guest outlives
    cgsnap frozen or paused."""

    default_provides = "thaw_guard"

    def execute(self, set_id, instance, agent, options):
        self.fault_point()
        if not CONF.libvirt.thaw_guard or not (agent["reachable"] or options.get("memory")):
            return {"enabled": False}
        record = guard.record_path(state.state_dir(), set_id)
        g = guard.start(set_id, self.drivers.hypervisor.uri, instance["id"], record,
                        CONF.libvirt.agent_timeout)
        return {"enabled": True, "pid": g.pid, "record": record}

    def revert(self, set_id, **kwargs):
        try:
            guard.stop(set_id)
        except Exception as e:  # log and swallow
            LOG.error("revert: could not stop the thaw guard of %s: %s", set_id, e)


def _arm(set_id, thaw_guard, options, mode):
    if not thaw_guard["enabled"]:
        return
    g = guard.get(set_id)
    if g is None:
        raise exception.QuiesceFailed("the thaw guard is not running; not freezing")
    g.arm(options["freeze_timeout"] + CONF.libvirt.thaw_guard_margin, mode)


def _window(started_at, started, options, mode, frozen, **extra):
    """The freeze result: one absolute monotonic deadline, counted from the
    moment the freeze (pause) call returned, bounds everything in the window."""
    frozen_mono = time.monotonic()
    return dict({"mode": mode, "frozen": frozen, "started_at": started_at,
                 "frozen_at": manifest_mod.isotime(), "started_mono": started,
                 "frozen_mono": frozen_mono, "timeout_s": options["freeze_timeout"],
                 # Counted from the start of the freeze call, less a reserve
                 # for the thaw call: the recorded window then stays within
                 # freeze_timeout unless the thaw itself is slow.
                 "deadline_mono": started + options["freeze_timeout"]
                 - min(0.1, options["freeze_timeout"] / 10)}, **extra)


def _disarm(set_id, instance, what):
    """Disarm the guard after cgsnap's own thaw/resume.  Returns ``(outcome,
    fired_mono)``; the guard is stopped unless it is still armed, in which
    case it is left running (it keeps thawing until the agent confirms)."""
    g = guard.get(set_id)
    if g is None:
        return "off", None
    outcome, fired_mono = g.disarm()
    if outcome == guard.ARMED:
        LOG.error("the guest agent has not confirmed the %s of %s: the thaw guard (pid %s) "
                  "stays armed and keeps trying", what, instance["name"], g.pid)
    guard.stop(set_id)
    return outcome, fired_mono


class FreezeGuest(CgsnapTask):
    """Freeze the guest's filesystems.  Its revert thaws, on every path.

    A freeze the agent attempts and fails is an error even with
    ``--allow-crash-consistent``: a half-done freeze is a broken agent state,
    not an unreachable agent (see Proxmox's experience with partial freezes).
    A freeze that froze no filesystem is not a filesystem-consistent cut: it
    fails, or with ``--allow-crash-consistent`` the set is recorded ``crash``
    with the reason.
    """

    default_provides = "freeze"

    def execute(self, set_id, instance, agent, options, thaw_guard):
        self.fault_point()
        if options.get("memory"):
            _arm(set_id, thaw_guard, options, guard.MODE_RESUME)
            started_at, started = manifest_mod.isotime(), time.monotonic()
            self.drivers.hypervisor.pause(instance["id"])
            return _window(started_at, started, options, manifest_mod.CONSISTENCY_MEMORY, 0)
        if not agent["reachable"]:
            return {"mode": manifest_mod.CONSISTENCY_CRASH, "frozen": 0,
                    "started_at": None, "frozen_at": None, "started_mono": None}
        _arm(set_id, thaw_guard, options, guard.MODE_THAW)
        started_at = manifest_mod.isotime()
        started = time.monotonic()
        frozen = self.drivers.hypervisor.freeze(instance["id"])
        if frozen:
            return _window(started_at, started, options, manifest_mod.CONSISTENCY_FILESYSTEM,
                           frozen)
        reason = f"the guest agent of {instance['name']} froze 0 filesystems"
        if not options.get("allow_crash_consistent"):
            raise exception.QuiesceFailed(
                f"{reason}; use --allow-crash-consistent to take a crash-consistent set")
        LOG.warning("%s; taking a crash-consistent set as allowed", reason)
        self.drivers.hypervisor.thaw(instance["id"])  # harmless; the guard wants a thaw
        if _disarm(set_id, instance, "thaw")[0] == guard.ARMED:
            raise exception.QuiesceFailed(f"{reason}, and its thaw was not confirmed")
        return {"mode": manifest_mod.CONSISTENCY_CRASH, "frozen": 0, "reason": reason,
                "started_at": None, "frozen_at": None, "started_mono": None}

    def revert(self, set_id, instance, agent, options, result, flow_failures=None, **kwargs):
        memory = options.get("memory")
        if not memory and not agent.get("reachable"):
            return
        if not memory and not is_failure(result) and not result.get("frozen"):
            return
        what = "resume" if memory else "thaw"
        try:
            if memory:
                self.drivers.hypervisor.resume(instance["id"])
            else:  # a failed freeze may have frozen some filesystems: thaw anyway
                thawed = self.drivers.hypervisor.thaw(instance["id"])
                LOG.info("revert: thawed %s filesystems of %s", thawed, instance["name"])
        except Exception as e:  # log and swallow: later reverts must still run
            LOG.error("revert: could not %s %s: %s", what, instance["name"], e)
        ended = time.monotonic()
        try:
            outcome, fired_mono = _disarm(set_id, instance, what)
        except Exception as e:  # the guard stays armed: it thaws on its own
            LOG.error("revert: could not disarm the thaw guard: %s", e)
            outcome, fired_mono = guard.ARMED, None
        if not is_failure(result) and result.get("started_mono") is not None:
            _tell_frozen_time(flow_failures, result, outcome, fired_mono or ended)


def _tell_frozen_time(flow_failures, freeze, outcome, thawed_mono):
    """Add to a window failure's message how long the guest was really
    frozen: from the freeze call to the thaw that ended it (cgsnap's or the
    guard's)."""
    if outcome == guard.ARMED:
        note = "; the guest is not confirmed thawed yet: the thaw guard keeps thawing it"
    else:
        held = thawed_mono - freeze["started_mono"]
        by = "the thaw guard" if outcome == guard.FIRED else "cgsnap"
        note = (f"; the guest was frozen for {held:.1f}s (freeze_timeout "
                f"{freeze['timeout_s']:g}s), thawed by {by}")
    for fail in (flow_failures or {}).values():
        exc = getattr(fail, "exception", None)
        if isinstance(exc, exception.CgsnapError) and exc.details.get("in_window") \
                and "the guest was frozen for" not in exc.message:
            exc.message += note
            if hasattr(fail, "_exception_str"):
                fail._exception_str = exc.message


class ThawGuest(CgsnapTask):
    """Thaw the guest once every member's point in time is taken."""

    default_provides = "thaw"

    def execute(self, set_id, instance, freeze, thaw_guard):
        self.fault_point()
        if freeze["mode"] == manifest_mod.CONSISTENCY_CRASH:
            guard.stop(set_id)
            return {"started_at": None, "ended_at": None, "window_s": None, "thawed": None,
                    "guard": "off"}
        started_at = manifest_mod.isotime()
        thaw_started = time.monotonic()
        memory = freeze["mode"] == manifest_mod.CONSISTENCY_MEMORY
        if memory:
            self.drivers.hypervisor.resume(instance["id"])
            thawed = 0
        else:
            thawed = self.drivers.hypervisor.thaw(instance["id"])
        window = time.monotonic() - freeze["started_mono"]
        outcome, fired_mono = "off", None
        if thaw_guard["enabled"]:
            outcome, fired_mono = _disarm(set_id, instance, "resume" if memory else "thaw")
        if outcome == guard.ARMED:
            raise exception.QuiesceFailed(
                f"the {'resume' if memory else 'thaw'} of {instance['name']} is not confirmed "
                "by the hypervisor: the thaw guard stays armed and keeps trying")
        if outcome == guard.FIRED:
            held = (fired_mono or time.monotonic()) - freeze["started_mono"]
            raise exception.QuiesceFailed(
                f"the freeze outlived its deadline: the thaw guard thawed {instance['name']} "
                f"after {held:.1f}s (freeze_timeout {freeze.get('timeout_s', 0):g}s), before "
                "every member was taken")
        deadline = freeze.get("deadline_mono")
        return {"started_at": started_at, "ended_at": manifest_mod.isotime(),
                "window_s": round(window, 6), "thawed": thawed, "guard": outcome,
                "deadline_missed": bool(deadline is not None and thaw_started > deadline)}
