"""Tasks that touch the guest through the hypervisor driver."""

import os
import shutil
import time

from oslo_log import log as logging

from cgsnap import exception, guard, state
from cgsnap import manifest as manifest_mod
from cgsnap.conf import CONF
from cgsnap.tasks.base import CgsnapTask, is_failure

LOG = logging.getLogger(__name__)


class DiscoverInstance(CgsnapTask):
    """Read the instance and its disks from the domain XML."""

    default_provides = "instance"

    def execute(self, instance_ref):
        self.fault_point()
        instance = self.drivers.hypervisor.get_instance(instance_ref)
        if not instance["disks"]:
            raise exception.Refused(f"instance {instance['name']} has no disks")
        return instance


class CheckRootDisk(CgsnapTask):
    """Refuse an image-backed root before any freeze when the hypervisor
    cannot take the disk-only snapshot its capture to Glance needs (libvirt's
    test driver).  ``--exclude-root`` skips the root."""

    def execute(self, manifest):
        self.fault_point()
        for member in manifest["members"]:
            if (member["role"] == "root" and member["kind"] == manifest_mod.KIND_GLANCE_IMAGE
                    and not self.drivers.hypervisor.supports_disk_snapshots()):
                raise exception.Refused(
                    f"root disk {member['device']} of instance {manifest['instance_name']} is "
                    f"image-backed and {self.drivers.hypervisor.uri} cannot take the disk-only "
                    "snapshot needed to capture it: use --exclude-root to snapshot only the "
                    "volumes")


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


class StartThawGuard(CgsnapTask):
    """Before the freeze: start the out-of-process thaw guard (see
    :mod:`cgsnap.guard`), so no guest outlives cgsnap frozen."""

    default_provides = "thaw_guard"

    def execute(self, set_id, instance, agent):
        self.fault_point()
        if not agent["reachable"] or not CONF.libvirt.thaw_guard:
            return {"enabled": False}
        record = os.path.join(state.state_dir(), "guards", f"{set_id}.json")
        g = guard.start(set_id, self.drivers.hypervisor.uri, instance["id"], record)
        return {"enabled": True, "pid": g.pid, "record": record}

    def revert(self, set_id, **kwargs):
        try:
            guard.stop(set_id)
        except Exception as e:  # log and swallow
            LOG.error("revert: could not stop the thaw guard of %s: %s", set_id, e)


class FreezeGuest(CgsnapTask):
    """Freeze the guest's filesystems.  Its revert thaws, on every path.

    A freeze the agent attempts and fails is an error even with
    ``--allow-crash-consistent``: a half-done freeze is a broken agent state,
    not an unreachable agent (see Proxmox's experience with partial freezes).
    """

    default_provides = "freeze"

    def execute(self, set_id, instance, agent, options, thaw_guard):
        self.fault_point()
        if options.get("memory"):
            started_at, started = manifest_mod.isotime(), time.monotonic()
            self.drivers.hypervisor.pause(instance["id"])
            return {"mode": manifest_mod.CONSISTENCY_MEMORY, "frozen": 0,
                    "started_at": started_at, "frozen_at": manifest_mod.isotime(),
                    "started_mono": started}
        if not agent["reachable"]:
            return {"mode": manifest_mod.CONSISTENCY_CRASH, "frozen": 0,
                    "started_at": None, "frozen_at": None, "started_mono": None}
        if thaw_guard["enabled"]:
            g = guard.get(set_id)
            if g is None:
                raise exception.QuiesceFailed("the thaw guard is not running; not freezing")
            g.arm(options["freeze_timeout"] + CONF.libvirt.thaw_guard_margin)
        started_at = manifest_mod.isotime()
        started = time.monotonic()
        frozen = self.drivers.hypervisor.freeze(instance["id"])
        return {"mode": manifest_mod.CONSISTENCY_FILESYSTEM, "frozen": frozen,
                "started_at": started_at, "frozen_at": manifest_mod.isotime(),
                "started_mono": started}

    def revert(self, set_id, instance, agent, options, result, **kwargs):
        if options.get("memory"):
            try:
                self.drivers.hypervisor.resume(instance["id"])
            except Exception as e:  # log and swallow: later reverts must still run
                LOG.error("revert: could not resume %s: %s", instance["name"], e)
            return
        if not agent.get("reachable"):
            return
        if not is_failure(result) and not result.get("frozen"):
            return
        # A failed freeze may have frozen some filesystems: thaw anyway.
        try:
            thawed = self.drivers.hypervisor.thaw(instance["id"])
            LOG.info("revert: thawed %s filesystems of %s", thawed, instance["name"])
        except Exception as e:  # log and swallow: later reverts must still run
            LOG.error("revert: could not thaw %s: %s", instance["name"], e)
        g = guard.get(set_id)
        if g is not None:
            try:
                g.disarm()
            except Exception as e:  # the guard thaws on close if still armed
                LOG.error("revert: could not disarm the thaw guard: %s", e)


class ThawGuest(CgsnapTask):
    """Thaw the guest once every member's point in time is taken."""

    default_provides = "thaw"

    def execute(self, set_id, instance, freeze, thaw_guard):
        self.fault_point()
        if freeze["mode"] == manifest_mod.CONSISTENCY_CRASH:
            return {"started_at": None, "ended_at": None, "window_s": None, "thawed": None,
                    "guard": "off"}
        started_at = manifest_mod.isotime()
        if freeze["mode"] == manifest_mod.CONSISTENCY_MEMORY:
            self.drivers.hypervisor.resume(instance["id"])
            thawed = 0
        else:
            thawed = self.drivers.hypervisor.thaw(instance["id"])
        window = time.monotonic() - freeze["started_mono"]
        outcome = "off"
        if thaw_guard["enabled"]:
            outcome = guard.get(set_id).disarm()
            guard.stop(set_id)
        if outcome == "fired":
            raise exception.QuiesceFailed(
                f"the freeze outlived its deadline ({window:.1f}s): the thaw guard thawed "
                f"{instance['name']} before every member was taken")
        return {"started_at": started_at, "ended_at": manifest_mod.isotime(),
                "window_s": round(window, 6), "thawed": thawed, "guard": outcome}
