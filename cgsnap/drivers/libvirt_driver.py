"""libvirt hypervisor driver: domain discovery and guest-agent freeze/thaw.

Connections are cached per URI per process.  That matters for libvirt's test
driver (``test:///path/node.xml``), whose state (including the simulated
freeze count) lives in one connection: the CLI, the flow and in-process tests
then all see the same guest.
"""

import os
import re
import threading
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape as xml_escape

import libvirt

from cgsnap import exception, faults, wait

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                      r"[0-9a-fA-F]{12}$")
_AGENT_ERRORS = {
    getattr(libvirt, name) for name in (
        "VIR_ERR_AGENT_UNRESPONSIVE", "VIR_ERR_AGENT_UNSYNCED", "VIR_ERR_OPERATION_UNSUPPORTED",
        "VIR_ERR_NO_SUPPORT", "VIR_ERR_ARGUMENT_UNSUPPORTED", "VIR_ERR_OPERATION_TIMEOUT",
        "VIR_ERR_AGENT_COMMAND_TIMEOUT", "VIR_ERR_AGENT_COMMAND_FAILED",
    ) if hasattr(libvirt, name)
}

_conn_lock = threading.Lock()
_conns = {}


def _silence_libvirt(_ctx, _err):
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_silence_libvirt, None)


def connection(uri):
    with _conn_lock:
        conn = _conns.get(uri)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise exception.ConfigError(
                f"cannot connect to libvirt at {uri}: {e.get_error_message()}") from None
        _conns[uri] = conn
        return conn


def reset_connection(uri):
    """Forget the cached connection to ``uri`` (after an error: libvirtd may
    have restarted), so the next call opens a new one."""
    with _conn_lock:
        conn = _conns.pop(uri, None)
    if conn is not None:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


# libvirt's test driver has no guest agent to ask: what this process froze and
# thawed through the driver stands in for guest-fsfreeze-status.
_test_frozen = {}


def is_uuid(text):
    return bool(_UUID_RE.match(text or ""))


def parse_disks(domain_xml, device="disk"):
    """Disks of one ``device`` type (``disk``, or ``lun`` for SCSI passthrough)
    from a domain XML; for ``disk``, the root disk first.

    The root is the disk the guest boots from, as libvirt decides it: the
    lowest per-disk ``<boot order>``; without one, the first disk of the
    domain XML (libvirt keeps disks grouped by bus, in the order the buses
    first appear, and by index within a bus, and gives the legacy
    ``<os><boot dev='hd'/>`` to the first ``disk`` or ``lun`` device).  So a
    guest booting from ``vda`` with a SCSI ``sda`` added later has root
    ``vda``, not ``sda``; a guest that boots from a LUN has no root disk.
    """
    root = ET.fromstring(domain_xml)
    disks = []
    for el in root.findall("./devices/disk"):
        kind = el.get("device", "disk")
        if kind not in ("disk", "lun"):
            continue
        target = el.find("target")
        if target is None:
            continue
        src = el.find("source")
        source = None
        if src is not None:
            source = (src.get("file") or src.get("dev") or src.get("name")
                      or src.get("volume"))
        drv = el.find("driver")
        boot = el.find("boot")
        serial = el.findtext("serial")
        # <encryption> sits in <source> (current libvirt) or in <disk> (older).
        encryption = el.find("./source/encryption")
        if encryption is None:
            encryption = el.find("encryption")
        disks.append({
            "device": target.get("dev"),
            "bus": target.get("bus"),
            "serial": serial.strip() if serial else None,
            "source_type": el.get("type", "file"),
            "source": source,
            "format": drv.get("type") if drv is not None else None,
            "boot_order": int(boot.get("order")) if boot is not None else None,
            "encryption": (encryption.get("format") or "yes") if encryption is not None
            else None,
            "root": False,
            "_kind": kind,
        })
    if disks:
        booted = [d for d in disks if d["boot_order"] is not None]
        boot_disk = min(booted, key=lambda d: d["boot_order"]) if booted else disks[0]
        boot_disk["root"] = boot_disk["_kind"] == "disk"
    disks = [d for d in disks if d.pop("_kind") == device]
    if device == "disk":
        disks.sort(key=lambda d: (not d["root"], len(d["device"]), d["device"]))
    else:
        for d in disks:
            d["root"] = False
    return disks


class LibvirtHypervisor:
    """:class:`cgsnap.drivers.base.Hypervisor` on libvirt."""

    def __init__(self, uri, agent_timeout=10):
        self.uri = uri
        self.agent_timeout = agent_timeout

    @property
    def conn(self):
        return connection(self.uri)

    def _domain(self, ref):
        try:
            if is_uuid(ref):
                return self.conn.lookupByUUIDString(ref)
            return self.conn.lookupByName(ref)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise exception.InstanceNotFound(
                    f"no instance {ref!r} on {self.uri} (give a libvirt domain name or UUID)"
                ) from None
            raise exception.ConfigError(f"libvirt error looking up {ref!r}: "
                                        f"{e.get_error_message()}") from None

    def get_instance(self, ref):
        dom = self._domain(ref)
        faults.point("hypervisor.get_instance")
        xml = dom.XMLDesc(0)
        return {
            "id": dom.UUIDString(),
            "name": dom.name(),
            "active": bool(dom.isActive()),
            "disks": parse_disks(xml),
            "luns": parse_disks(xml, device="lun"),
        }

    def _agent_call(self, instance_id, what, fn):
        dom = self._domain(instance_id)
        try:
            dom.agentSetResponseTimeout(self.agent_timeout, 0)
        except (libvirt.libvirtError, AttributeError):
            pass  # best effort: not every driver (e.g. test://) supports it
        try:
            return fn(dom)
        except libvirt.libvirtError as e:
            code = e.get_error_code()
            msg = f"guest agent {what} failed on {dom.name()}: {e.get_error_message()}"
            if code in _AGENT_ERRORS:
                raise exception.AgentUnreachable(msg) from None
            raise exception.QuiesceFailed(msg) from None

    def ping_agent(self, instance_id):
        faults.point("hypervisor.ping_agent")
        # guest-get-time is a cheap agent round trip available through the public API.
        self._agent_call(instance_id, "ping", lambda dom: dom.getTime())

    def freeze(self, instance_id):
        faults.point("hypervisor.freeze")
        n = self._agent_call(instance_id, "freeze", self._test_tracked(instance_id, True,
                                                                        lambda d: d.fsFreeze()))
        faults.point("hypervisor.freeze.after")
        return int(n)

    def thaw(self, instance_id):
        faults.point("hypervisor.thaw")
        n = self._agent_call(instance_id, "thaw", self._test_tracked(instance_id, False,
                                                                      lambda d: d.fsThaw()))
        faults.point("hypervisor.thaw.after")
        return int(n)

    def _test_tracked(self, instance_id, frozen, fn):
        """On test://, remember the freeze state a successful call leaves."""
        def call(dom):
            out = fn(dom)
            if self.uri.startswith("test:"):
                key = (self.uri, dom.UUIDString())
                if frozen and out:
                    _test_frozen[key] = True
                elif not frozen:
                    _test_frozen.pop(key, None)
            return out
        return call

    def freeze_status(self, instance_id):
        """``"frozen"`` or ``"thawed"``, as the guest agent reports it
        (``guest-fsfreeze-status``).  Raises InstanceNotFound when the domain
        is gone and AgentUnreachable/QuiesceFailed when nobody answers.  A
        domain that is not running is ``"thawed"`` (nothing in it is frozen).

        On libvirt's test driver, which has no agent, it is what this process
        did through :meth:`freeze` and :meth:`thaw`."""
        faults.point("hypervisor.freeze_status")
        dom = self._domain(instance_id)
        if self.uri.startswith("test:"):
            return "frozen" if _test_frozen.get((self.uri, dom.UUIDString())) else "thawed"
        try:
            if not dom.isActive():
                return "thawed"
        except libvirt.libvirtError as e:
            raise exception.QuiesceFailed(f"cannot read the state of {instance_id}: "
                                          f"{e.get_error_message()}") from None
        import json

        import libvirt_qemu
        cmd = json.dumps({"execute": "guest-fsfreeze-status"})
        out = self._agent_call(instance_id, "freeze status", lambda d: libvirt_qemu.
                               qemuAgentCommand(d, cmd, self.agent_timeout, 0))
        status = json.loads(out).get("return")
        if status not in ("frozen", "thawed"):
            raise exception.QuiesceFailed(f"guest agent of {instance_id} reported freeze "
                                          f"status {status!r}")
        return status

    def is_paused(self, instance_id):
        """Whether the domain is paused (raises InstanceNotFound if it is gone)."""
        dom = self._domain(instance_id)
        try:
            return dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        except libvirt.libvirtError as e:
            raise exception.SnapshotFailed(f"cannot read the state of {instance_id}: "
                                           f"{e.get_error_message()}") from None

    # -- local (file-backed) disks: external snapshots, real hypervisors only ----
    def supports_disk_snapshots(self):
        """libvirt's test driver rejects disk-only snapshots; QEMU supports them."""
        return not self.uri.startswith("test:")

    def disk_source(self, instance_id, device):
        """The file a disk currently points at (its active layer)."""
        for disk in parse_disks(self._domain(instance_id).XMLDesc(0)):
            if disk["device"] == device:
                return disk["source"]
        raise exception.NotFound(f"disk {device} not found on instance {instance_id}")

    def pause(self, instance_id):
        faults.point("hypervisor.pause")
        dom = self._domain(instance_id)
        try:
            dom.suspend()
        except libvirt.libvirtError as e:
            raise exception.SnapshotFailed(f"cannot pause {dom.name()}: "
                                           f"{e.get_error_message()}") from None

    def resume(self, instance_id):
        """Resume a paused guest; return False if it was not paused."""
        faults.point("hypervisor.resume")
        dom = self._domain(instance_id)
        if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            return False
        try:
            dom.resume()
        except libvirt.libvirtError as e:
            raise exception.SnapshotFailed(f"cannot resume {dom.name()}: "
                                           f"{e.get_error_message()}") from None
        return True

    def machine_facts(self, instance_id):
        """What a restore of a memory image must match: guest size, host CPU,
        libvirt and QEMU versions."""
        dom = self._domain(instance_id)
        conn = self.conn
        root = ET.fromstring(conn.getCapabilities())
        cpu = root.find("./host/cpu")
        host_cpu = {"arch": cpu.findtext("arch"), "model": cpu.findtext("model"),
                    "vendor": cpu.findtext("vendor"),
                    "features": sorted(f.get("name") for f in cpu.findall("feature"))}
        _state, max_kib, _mem, vcpus, _cpu = dom.info()

        def _ver(n):
            return f"{n // 1000000}.{n // 1000 % 1000}.{n % 1000}"

        return {"vcpus": vcpus, "memory_mib": max_kib // 1024, "host_cpu": host_cpu,
                "libvirt_version": _ver(conn.getLibVersion()),
                "qemu_version": _ver(conn.getVersion())}

    def snapshot_disks_external(self, instance_id, overlays, memory_file=None):
        """One atomic external snapshot of the disks in ``overlays``
        (``{device: overlay_path}``), plus the memory state when
        ``memory_file`` is given; every other disk is left alone.  After it,
        each original file is frozen in time and the guest writes to its
        overlay."""
        dom = self._domain(instance_id)
        parts = []
        for disk in parse_disks(dom.XMLDesc(0)):
            dev = disk["device"]
            if dev in overlays:
                parts.append(f"<disk name='{dev}' snapshot='external'><driver type='qcow2'/>"
                             f"<source file='{xml_escape(overlays[dev])}'/></disk>")
            else:
                parts.append(f"<disk name='{dev}' snapshot='no'/>")
        memory = (f"<memory snapshot='external' file='{xml_escape(memory_file)}'/>"
                  if memory_file else "")
        xml = ("<domainsnapshot><name>cgsnap-" + os.urandom(4).hex() + "</name>" + memory
               + "<disks>" + "".join(parts) + "</disks></domainsnapshot>")
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
        if not memory_file:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        faults.point("hypervisor.snapshot_disks")
        try:
            dom.snapshotCreateXML(xml, flags)
        except libvirt.libvirtError as e:
            raise exception.SnapshotFailed(
                f"disk-only snapshot of {dom.name()} failed: {e.get_error_message()}") from None
        faults.point("hypervisor.snapshot_disks.after")

    def block_job_active(self, instance_id, device):
        try:
            return bool(self._domain(instance_id).blockJobInfo(device, 0))
        except libvirt.libvirtError:
            return False

    def commit_active_layer(self, instance_id, device, deadline_s=60.0):
        """Merge a disk's active overlay back into its backing file and pivot
        to it (the disk chain ends as it began).  On failure the job is
        aborted, so the disk is never left inside a block job."""
        dom = self._domain(instance_id)
        faults.point("hypervisor.block_commit")
        flags = (libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)

        def _try_pivot():
            # The job may only pivot once it is "ready" (mirroring); libvirt
            # refuses earlier, so the pivot itself is the readiness probe.
            try:
                dom.blockJobAbort(device, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                return True
            except libvirt.libvirtError as e:
                if e.get_error_code() in (libvirt.VIR_ERR_BLOCK_COPY_ACTIVE,
                                          libvirt.VIR_ERR_OPERATION_INVALID):
                    return False
                raise

        try:
            dom.blockCommit(device, None, None, 0, flags)
            wait.poll(_try_pivot, bool, deadline_s, 0.01, 0.2, what=f"block commit of {device}")
            wait.poll(lambda: dom.blockJobInfo(device, 0), lambda info: not info,
                      deadline_s, 0.01, 0.2, what=f"pivot of {device}")
        except (libvirt.libvirtError, exception.WaitTimeout) as e:
            try:
                dom.blockJobAbort(device, 0)
            except libvirt.libvirtError:
                pass
            msg = e.get_error_message() if isinstance(e, libvirt.libvirtError) else str(e)
            raise exception.SnapshotFailed(
                f"block commit of {device} on {dom.name()} failed: {msg}") from None
