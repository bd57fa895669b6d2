"""Lab helpers for the tests, ``make demo`` (tools/demo.py) and the benchmarks
(bench/): libvirt test-driver guests and dev-cloud volumes.

Not part of the installed package: :class:`CinderLab` uses the dev cloud's
admin account to reset states and change quotas.  Everything that imports
this module runs from a repository checkout (``from tests import lab``; the
demo and bench scripts put the repository root on ``sys.path``).

libvirt's test driver (``test:///path/node.xml``) is real libvirt API with a
simulated hypervisor: it keeps a freeze count per domain, so cgsnap's
freeze/thaw go through the real libvirt calls.  It cannot take disk snapshots;
storage comes from Cinder (or the fake backend, cgsnap/drivers/fake.py).
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


class CinderLab:
    """Provision real Cinder volumes attached to a (test-driver) instance.

    Used by ``make demo`` and the functional tests against the dev cloud.
    ``user`` does what a tenant does; ``admin`` changes quotas and forces
    volume states for the failure tests.
    """

    def __init__(self, clouds_yaml, cloud="devcloud", admin_cloud="devcloud-admin",
                 api_version="3.71"):
        import openstack.config
        from cinderclient import api_versions
        from cinderclient.v3 import client as cinder_client

        loader = openstack.config.OpenStackConfig(config_files=[clouds_yaml])

        def _client(name):
            region = loader.get_one(cloud=name)
            return cinder_client.Client(session=region.get_session(),
                                        api_version=api_versions.APIVersion(api_version),
                                        region_name=region.region_name), region

        self.user, region = _client(cloud)
        self.admin, _ = _client(admin_cloud)
        self.session = region.get_session()
        self.project_id = self.session.get_project_id()

    def _wait_volume(self, vid, status, deadline=60.0):
        from cgsnap import wait
        return wait.poll(lambda: self.user.volumes.get(vid),
                         lambda v: v.status in (status, "error"), deadline, 0.05, 0.5,
                         what=f"volume {vid} -> {status}")

    def create_group(self, group_type, name="cgsnap-test-group"):
        """A generic volume group of ``group_type`` (volume type ``fake``)."""
        from cgsnap import wait
        gid = self.user.groups.create(group_type, "fake", name=name).id
        group = wait.poll(lambda: self.user.groups.get(gid), lambda g: g.status != "creating",
                          60, 0.05, 0.5, what=f"group {gid}")
        if group.status != "available":
            raise RuntimeError(f"group {gid} went to {group.status}")
        return gid

    def create_attached_volumes(self, instance_id, count, size_gb=1, prefix="cgsnap-test",
                                group_id=None, deadline=60.0):
        """Create ``count`` volumes (in ``group_id`` if given) and attach them to
        ``instance_id`` (in-use)."""
        extra = {"volume_type": "fake", "group_id": group_id} if group_id else {}
        vols = [self.user.volumes.create(size_gb, name=f"{prefix}-{i}", **extra)
                for i in range(count)]
        ids = []
        for v in vols:
            v = self._wait_volume(v.id, "available", deadline)
            if v.status != "available":
                raise RuntimeError(f"volume {v.id} went to {v.status}")
            self.attach(v.id, instance_id)
            ids.append(v.id)
        return ids

    def attach(self, volume_id, instance_id):
        att = self.user.attachments.create(volume_id, None, instance_id, mode="rw")
        self.user.attachments.complete(att["id"] if isinstance(att, dict) else att.id)
        self._wait_volume(volume_id, "in-use")

    def detach_all(self, volume_id):
        vol = self.admin.volumes.get(volume_id)
        for a in vol.attachments or []:
            try:
                self.admin.attachments.delete(a["attachment_id"])
            except Exception:
                pass

    def delete_group_snapshots(self, group_id):
        """Best-effort: delete every group snapshot of a group and wait."""
        from cgsnap import wait
        gss = [g.id for g in self.admin.group_snapshots.list(search_opts={"all_tenants": 1})
               if g.group_id == group_id]
        for gsid in gss:
            try:
                self.admin.group_snapshots.delete(gsid)
            except Exception:
                pass
        wait.poll(lambda: [g for g in self.admin.group_snapshots.list(
            search_opts={"all_tenants": 1}) if g.id in gss], lambda left: not left, 60, 0.1, 1,
            what="group snapshot teardown")

    def delete_volumes(self, volume_ids):
        """Best-effort teardown: group snapshots and snapshots first, then
        group membership and attachments, then volumes."""
        from cgsnap import wait
        groups = set()
        for vid in volume_ids:
            try:
                gid = getattr(self.admin.volumes.get(vid), "group_id", None)
                if gid and gid not in groups:
                    groups.add(gid)
                    self.delete_group_snapshots(gid)
            except Exception:
                pass
        for gid in groups:  # Cinder does not delete a volume that is in a group
            try:
                members = [v.id for v in self.admin.volumes.list(
                    search_opts={"all_tenants": 1, "group_id": gid})]
                if members:
                    self.admin.groups.update(gid, remove_volumes=",".join(members))
                    wait.poll(lambda gid=gid: self.admin.groups.get(gid).status,
                              lambda st: st != "updating", 60, 0.05, 0.5, what="group update")
            except Exception:
                pass
        for vid in volume_ids:
            try:
                for s in self.admin.volume_snapshots.list(
                        search_opts={"all_tenants": 1, "volume_id": vid}):
                    self.admin.volume_snapshots.delete(s.id, force=True)
                self.admin.volumes.reset_state(vid, "available", attach_status="detached")
                self.detach_all(vid)
                self.admin.volumes.delete(vid, cascade=True)
            except Exception:
                pass
        for gid in groups:
            try:
                self.admin.groups.delete(gid)
            except Exception:
                pass

    def set_quota(self, **limits):
        self.admin.quotas.update(self.project_id, **limits)

    def reset_status(self, volume_id, status):
        self.admin.volumes.reset_state(volume_id, status)
