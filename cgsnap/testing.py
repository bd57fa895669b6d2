"""Helpers for tests, the demo and benchmarks: libvirt test-driver guests.

libvirt's test driver (``test:///path/node.xml``) is real libvirt API with a
simulated hypervisor: it keeps a freeze count per domain, so cgsnap's
freeze/thaw go through the real libvirt calls.  It cannot take disk snapshots;
storage comes from Cinder (or the in-memory backend).
"""

import os
import uuid
from xml.sax.saxutils import escape

_DOMAIN = """  <domain type='test'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <memory>262144</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices>
{disks}    </devices>
  </domain>
"""

_DISK = """      <disk type='{type}' device='disk'>
        <driver name='qemu' type='{fmt}'/>
        <source {src_attr}='{source}'/>
        <target dev='{dev}' bus='virtio'/>
{serial}      </disk>
"""


def device_name(index):
    """vda, vdb, ..., vdz, vdaa, ... (Linux virtio naming)."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return "vd" + letters


def domain_xml(name, instance_id, root_volume_id=None, volume_ids=(), root_image="base.qcow2"):
    disks = []
    all_disks = [root_volume_id] + list(volume_ids)
    for i, vid in enumerate(all_disks):
        if vid:
            disks.append(_DISK.format(type="block", fmt="raw", src_attr="dev",
                                      source=f"/dev/disk/by-id/virtio-{vid[:20]}",
                                      dev=device_name(i),
                                      serial=f"        <serial>{vid}</serial>\n"))
        else:
            disks.append(_DISK.format(type="file", fmt="qcow2", src_attr="file",
                                      source=escape(f"/var/lib/libvirt/images/{root_image}"),
                                      dev=device_name(i), serial=""))
    return _DOMAIN.format(name=escape(name), uuid=instance_id, disks="".join(disks))


def write_node(path, domains):
    """Write a test-driver node file holding ``domains`` (XML strings);
    return its ``test://`` URI."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("<node>\n" + "".join(domains) + "</node>\n")
    os.replace(tmp, path)
    return f"test://{os.path.abspath(path)}"


def new_instance_id():
    return str(uuid.uuid4())
