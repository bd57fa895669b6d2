"""Manifest v2's restore facts (issue 13, part 1) and the snapshot tree
(part 4): what the set records about the instance before the freeze (the
domain XML without secrets, disks, NICs, vCPUs, memory, machine type, guest
CPU), each set's parent, and ``cgsnap list --tree``."""

import json

from cgsnap import manifest
from cgsnap.drivers import libvirt_driver

DOMAIN = """<domain type='kvm'>
  <name>web1</name><uuid>6f1d2c3e-8a7b-4c5d-9e0f-112233445566</uuid>
  <memory unit='MiB'>2048</memory><vcpu>4</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <cpu mode='custom' match='exact'><model>Skylake-Client</model>
    <feature policy='require' name='vmx'/></cpu>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/>
      <auth username='cinder'>
        <secret type='ceph' uuid='0a1b2c3d-0000-4000-8000-000000000001'/></auth>
      <source protocol='rbd' name='volumes/volume-1'/><target dev='vdb' bus='virtio'/>
      <serial>1d2e3f40-aaaa-4bbb-8ccc-dddddddddddd</serial></disk>
    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/>
      <model type='virtio'/></interface>
    <graphics type='vnc' port='-1' passwd='hunter2'/>
  </devices>
</domain>"""


def test_domain_facts_keep_what_a_restore_needs_and_drop_every_secret():
    facts = libvirt_driver.domain_facts(DOMAIN)
    assert (facts["vcpus"], facts["memory_kib"], facts["machine_type"], facts["arch"]) == \
        (4, 2048 * 1024, "pc-q35-7.2", "x86_64")
    assert "Skylake-Client" in facts["cpu"] and "vmx" in facts["cpu"]
    assert facts["disks"] == [
        {"target": "vda", "bus": "virtio", "device": "disk", "serial": None,
         "source": "/var/lib/libvirt/images/web1.qcow2", "format": "qcow2"},
        {"target": "vdb", "bus": "virtio", "device": "disk",
         "serial": "1d2e3f40-aaaa-4bbb-8ccc-dddddddddddd", "source": "volumes/volume-1",
         "format": "raw"}]
    assert facts["nics"] == [{"mac": "52:54:00:12:34:56", "type": "bridge", "source": "br0",
                              "model": "virtio"}]
    xml = facts["domain_xml"]
    for secret in ("hunter2", "passwd", "<secret", "<auth", "0a1b2c3d-0000"):
        assert secret not in xml
    assert "web1.qcow2" in xml and "52:54:00:12:34:56" in xml


def test_a_set_records_the_machine_and_follows_the_newest_good_set(cli_run, guest):
    def create():
        rc, out, err = cli_run("create", "--all-volumes", guest.name, "-f", "json")
        assert rc == 0, err
        return json.loads(out)
    first = create()
    m = first["machine"]
    assert m["vcpus"] >= 1 and m["memory_kib"] == 262144
    assert [d["target"] for d in m["disks"]] == ["vda", "vdb", "vdc", "vdd"]
    assert [d["serial"] for d in m["disks"]] == [guest.root_volume_id, *guest.volume_ids]
    assert guest.id in m["domain_xml"]
    assert first["parent"] is None
    second = create()
    assert second["parent"] == first["id"]
    guest.backend.fail_volume_ids.add(guest.volume_ids[0])
    assert cli_run("create", "--all-volumes", guest.name)[0] == 6
    guest.backend.fail_volume_ids.clear()
    third = create()  # a failed set in between is nobody's parent
    assert third["parent"] == second["id"]
    manifest.verify(third)


def test_a_v1_manifest_without_the_new_fields_still_reads(tmp_path):
    import os
    with open(os.path.join(os.path.dirname(__file__), "data", "manifest-v1.json")) as f:
        doc = json.load(f)
    manifest.verify(doc)
    assert "machine" not in doc and "parent" not in doc


def _doc(set_id, parent, created, status="available"):
    return {"id": set_id + "-0000-4000-8000-000000000000", "name": set_id, "status": status,
            "created_at": f"2026-12-0{created}T02:00:00.000000Z",
            "parent": parent and parent + "-0000-4000-8000-000000000000"}


def test_the_tree_branches_where_an_instance_went_back_and_marks_now():
    import re

    from cgsnap import settree
    # a <- b <- c, then (after a restore to a) a <- d; e's parent was deleted
    docs = [_doc("aaaaaaaa", None, 1), _doc("bbbbbbbb", "aaaaaaaa", 2),
            _doc("cccccccc", "bbbbbbbb", 3), _doc("dddddddd", "aaaaaaaa", 4),
            _doc("eeeeeeee", "99999999", 5, status="failed")]
    lines = settree.render(docs)
    shape = [re.sub(r" \S+ (available|failed) [0-9-]+ [0-9:]+", "", line) for line in lines]
    assert shape == ["aaaaaaaa",
                     "├── bbbbbbbb",
                     "│   └── cccccccc",
                     "└── dddddddd  * now",
                     "eeeeeeee"]
    tree = settree.nested(docs)
    assert [n["name"] for n in tree] == ["aaaaaaaa", "eeeeeeee"]
    assert [k["name"] for k in tree[0]["children"]] == ["bbbbbbbb", "dddddddd"]
    assert tree[0]["children"][1]["now"] is True


def test_list_tree_on_the_cli(cli_run, guest):
    ids = []
    for _ in range(2):
        rc, out, _err = cli_run("create", guest.name, "-f", "json")
        ids.append(json.loads(out)["id"])
    rc, out, err = cli_run("list", "--tree", "--instance", guest.name)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(ids[0][:8]) and lines[1].startswith("└── " + ids[1][:8])
    assert lines[1].endswith("* now")
    rc, _out, err = cli_run("list", "--tree")
    assert rc == 2 and "--tree needs --instance" in err
