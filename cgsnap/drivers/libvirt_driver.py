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


_TRANSPORT_ERRORS = {getattr(libvirt, n) for n in (
    "VIR_ERR_SYSTEM_ERROR", "VIR_ERR_RPC", "VIR_ERR_NO_CONNECT", "VIR_ERR_INVALID_CONN")
    if hasattr(libvirt, n)}


def _connection_broken(err):
    """A transport error (libvirtd restarted, socket closed), not an answer."""
    return (err.get_error_code() in _TRANSPORT_ERRORS
            or err.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE))


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


def disk_chains(domain_xml):
    """Every disk's files (any device type): ``[{"device", "files", "chain_known"}]``.

    ``files`` is the active layer first, then the backing chain as libvirt
    reports it in ``<backingStore>``.  ``chain_known`` is False when libvirt
    did not report the chain (inactive XML, old libvirt): then the caller must
    find the backing files itself."""
    out = []
    for el in ET.fromstring(domain_xml).findall("./devices/disk"):
        target = el.find("target")
        files, node, known = [], el, False
        while node is not None:
            src = node.find("source")
            if src is not None:
                path = src.get("file") or src.get("dev") or src.get("dir")
                if path:
                    files.append(path)
            node = node.find("backingStore")
            if node is not None:
                known = True
        if files:
            out.append({"device": target.get("dev") if target is not None else "?",
                        "files": files, "chain_known": known})
    return out


def _resolve_dac_label(label):
    import grp
    import pwd
    user, _, group = label.strip().partition(":")
    try:
        uid = int(user[1:]) if user.startswith("+") else pwd.getpwnam(user).pw_uid
        gid = int(group[1:]) if group.startswith("+") else grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):
        return None
    return uid, gid


def _xml_attr(text):
    """Escape ``text`` for an XML attribute quoted with ``'`` (or ``"``)."""
    return xml_escape(text, {"'": "&apos;", '"': "&quot;"})


COMMIT_BASE_S = 60.0  # a commit with nothing left to copy still gets this long
COMMIT_MIN_RATE = 8 << 20  # bytes/s: slower than this for a whole stretch = stalled


# The domain metadata a host-wide run selects by (``create --all-instances
# --domain-label K=V``).  Set it with:
#   virsh metadata DOMAIN --uri https://cgsnap.dev/xmlns/labels/1 --key cgsnap \
#       --set '<labels><label key="backup">nightly</label></labels>'
LABELS_NS = "https://cgsnap.dev/xmlns/labels/1"


def domain_labels(dom):
    """``{key: value}`` from the domain's cgsnap labels metadata ({} if none)."""
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, LABELS_NS, 0)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return {}
        raise
    root = ET.fromstring(xml)
    return {el.get("key"): (el.text or "") for el in root.iter()
            if el.tag.rpartition("}")[2] == "label" and el.get("key")}


# Attributes and elements of a domain XML that hold secrets: a restore or a
# clone never needs them from the manifest (the manifest is readable by whoever
# may list sets).
_SECRET_ATTRS = ("passwd",)
_SECRET_ELEMENTS = ("secret", "auth", "launchSecurity")


def domain_facts(domain_xml):
    """``{"domain_xml", "vcpus", "memory_kib", "machine_type", "arch", "cpu",
    "disks": [{"target", "bus", "device", "serial", "source", "format"}],
    "nics": [{"mac", "type", "source", "model"}]}`` from a domain XML; the
    XML kept has every secret removed (passwords, ``<secret>``, ``<auth>``,
    launch security)."""
    root = ET.fromstring(domain_xml)
    for parent in root.iter():
        for child in list(parent):
            if child.tag in _SECRET_ELEMENTS:
                parent.remove(child)
        for attr in _SECRET_ATTRS:
            parent.attrib.pop(attr, None)
    os_type = root.find("./os/type")
    cpu = root.find("./cpu")
    disks = []
    for d in root.findall("./devices/disk"):
        src = d.find("source")
        target, driver = d.find("target"), d.find("driver")
        disks.append({
            "target": target.get("dev") if target is not None else None,
            "bus": target.get("bus") if target is not None else None,
            "device": d.get("device", "disk"),
            "serial": d.findtext("serial"),
            "source": None if src is None else (src.get("file") or src.get("dev")
                                                or src.get("name") or src.get("volume")),
            "format": driver.get("type") if driver is not None else None})
    nics = []
    for n in root.findall("./devices/interface"):
        mac, src, model = n.find("mac"), n.find("source"), n.find("model")
        nics.append({"mac": mac.get("address") if mac is not None else None,
                     "type": n.get("type"),
                     "source": None if src is None else (src.get("bridge") or src.get("network")
                                                         or src.get("dev")),
                     "model": model.get("type") if model is not None else None})
    memory = root.find("./memory")
    kib = int(memory.text) * {"KiB": 1, "k": 1, "MiB": 1024, "M": 1024, "GiB": 1 << 20,
                              "G": 1 << 20, "b": 1 / 1024, "bytes": 1 / 1024}.get(
        memory.get("unit", "KiB"), 1) if memory is not None else None
    return {"domain_xml": ET.tostring(root, encoding="unicode"),
            "vcpus": int(root.findtext("vcpu") or 1),
            "memory_kib": int(kib) if kib is not None else None,
            "machine_type": os_type.get("machine") if os_type is not None else None,
            "arch": os_type.get("arch") if os_type is not None else None,
            "cpu": ET.tostring(cpu, encoding="unicode") if cpu is not None else None,
            "disks": disks, "nics": nics}


class LibvirtHypervisor:
    """:class:`cgsnap.drivers.base.Hypervisor` on libvirt."""

    def __init__(self, uri, agent_timeout=10):
        self.uri = uri
        self.agent_timeout = agent_timeout

    @property
    def conn(self):
        return connection(self.uri)

    def _lookup(self, ref):
        if is_uuid(ref):
            return self.conn.lookupByUUIDString(ref)
        return self.conn.lookupByName(ref)

    def _domain(self, ref):
        try:
            try:
                return self._lookup(ref)
            except libvirt.libvirtError as e:
                if not _connection_broken(e) or self.uri.startswith("test:"):
                    raise  # (the test driver's state lives in its one connection)
                # libvirtd restarted under a long-lived process: its cached
                # connection is dead although isAlive() may not know yet.
                reset_connection(self.uri)
                return self._lookup(ref)
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

    def agent_channel(self, instance_id):
        """The unix socket of the domain's guest-agent channel (read while
        libvirtd is up; the thaw guard's way to the agent when it is not), or
        None (test driver, no such channel)."""
        if self.uri.startswith("test:"):
            return None
        from cgsnap.drivers import agent_channel
        return agent_channel.channel_path(self._domain(instance_id).XMLDesc(0))

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

    def domain_facts(self, instance_id):
        """What a restore or a clone needs to rebuild the instance, read before
        the freeze (manifest ``machine``): :func:`domain_facts` of the live XML,
        with each disk's size from libvirt's block info where it can tell."""
        dom = self._domain(instance_id)
        facts = domain_facts(dom.XMLDesc(0))
        for disk in facts["disks"]:
            try:
                disk["size_bytes"] = int(dom.blockInfo(disk["target"])[0])
            except libvirt.libvirtError:
                disk["size_bytes"] = None  # (the test driver's block devices have none)
        return facts

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
                             f"<source file='{_xml_attr(overlays[dev])}'/></disk>")
            else:
                parts.append(f"<disk name='{dev}' snapshot='no'/>")
        memory = (f"<memory snapshot='external' file='{_xml_attr(memory_file)}'/>"
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

    def running_instances(self):
        """Every running domain: ``[{"id", "name", "labels"}]``, where
        ``labels`` are the domain's own cgsnap labels (:data:`LABELS_NS`)."""
        out = []
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                out.append({"id": dom.UUIDString(), "name": dom.name(),
                            "labels": domain_labels(dom)})
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise  # (one that went away while we looked is simply not running)
        return out

    def disk_users(self):
        """Every disk of every domain of this URI, active and inactive:
        ``[{"domain", "id", "device", "files", "chain_known"}]`` (both the
        live and the persistent definition of a running domain)."""
        out = []
        for dom in self.conn.listAllDomains(0):
            try:
                name, uuid = dom.name(), dom.UUIDString()
                xmls = [dom.XMLDesc(0)]
                if dom.isActive() and dom.isPersistent():
                    xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined while we looked: it uses nothing any more
                raise
            for xml in xmls:
                for disk in disk_chains(xml):
                    out.append(dict(disk, domain=name, id=uuid))
        return out

    def qemu_dac_user(self, instance_id):
        """``(uid, gid)`` QEMU runs as under libvirt's DAC driver, from the
        running domain's ``<seclabel model='dac'>`` label (``+uid:+gid`` or
        names); None when there is no DAC label (no security driver) or it
        cannot be resolved."""
        root = ET.fromstring(self._domain(instance_id).XMLDesc(0))
        for sec in root.findall("./seclabel"):
            if sec.get("model") == "dac" and sec.findtext("label"):
                return _resolve_dac_label(sec.findtext("label"))
        return None

    def block_job_active(self, instance_id, device):
        try:
            return bool(self._domain(instance_id).blockJobInfo(device, 0))
        except libvirt.libvirtError:
            return False

    def commit_active_layer(self, instance_id, device, deadline_s=COMMIT_BASE_S,
                            min_rate=COMMIT_MIN_RATE):
        """Merge a disk's active overlay back into its backing file and pivot
        to it (the disk chain ends as it began).  On failure the job is
        aborted, so the disk is never left inside a block job.

        The wait follows libvirt's block-job progress (``blockJobInfo``
        cur/end): each stretch may last ``deadline_s`` plus the bytes left
        divided by ``min_rate`` (bytes/s), and a new stretch starts while the
        job makes progress; it fails only when a whole stretch passes with no
        progress.  An active-commit job already running on the disk (a
        commit whose process died) is adopted, not started twice."""
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
            job = dom.blockJobInfo(device, 0)
            if not job or job.get("type") != libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
                dom.blockCommit(device, None, None, 0, flags)
            self._wait_with_progress(dom, device, _try_pivot, deadline_s, min_rate)
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

    @staticmethod
    def _wait_with_progress(dom, device, probe, base_s, min_rate):
        """Poll ``probe`` until it is true; each stretch's deadline scales with
        the bytes the block job has left, and is renewed while ``cur`` grows."""
        last_cur, stretch = -1, base_s
        while True:
            info = dom.blockJobInfo(device, 0) or {}
            cur, end = int(info.get("cur", 0)), int(info.get("end", 0))
            if cur <= last_cur:
                raise exception.WaitTimeout(
                    f"block commit of {device} made no progress for {stretch:.1f}s "
                    f"({cur} of {end} bytes)")
            last_cur = cur
            stretch = base_s + max(end - cur, 0) / float(min_rate)
            try:
                wait.poll(probe, bool, stretch, 0.01, 0.2, what=f"block commit of {device}")
                return
            except exception.WaitTimeout:
                continue  # go round: fail only if the job did not move

    def running_jobs(self, instance_id, devices):
        """libvirt calls still running on the domain: a domain job (an
        external snapshot, a save) and block jobs on ``devices`` other than
        an active commit (that one is adopted by :meth:`commit_active_layer`)."""
        dom = self._domain(instance_id)
        out = []
        try:
            if dom.jobInfo()[0] in (libvirt.VIR_DOMAIN_JOB_BOUNDED,
                                    libvirt.VIR_DOMAIN_JOB_UNBOUNDED):
                out.append("a domain job (snapshot, save or migration)")
        except libvirt.libvirtError:
            pass  # not running, or the driver has no job info: no job
        for dev in devices:
            try:
                info = dom.blockJobInfo(dev, 0)
            except libvirt.libvirtError:
                continue
            if not info:
                continue
            # An active commit is the job we would start: commit_active_layer
            # adopts it and pivots once it is ready.  (Under a writing guest a
            # slow one may never show cur == end, so waiting for that could
            # wait for ever.)
            if info.get("type") != libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
                out.append(f"a block job on {dev} ({info.get('cur')}/{info.get('end')})")
        return out

    def wait_for_jobs(self, instance_id, devices, deadline_s):
        """Wait until :meth:`running_jobs` is empty; raise WaitTimeout naming them."""
        faults.point("hypervisor.wait_for_jobs")
        wait.poll(lambda: self.running_jobs(instance_id, devices), lambda jobs: not jobs,
                  deadline_s, 0.05, 1.0,
                  what=f"libvirt jobs on {instance_id} ({', '.join(devices)})")
