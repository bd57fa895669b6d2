#!/usr/bin/env python3
"""`make demo`: snapshot a demo instance against the real dev cloud.

The demo instance is a libvirt test-driver domain ("demo") whose disks carry
the ids of real Cinder volumes in the dev cloud: a volume-backed root and
three data volumes, attached to the instance in Cinder.  This script

1. creates those volumes once (a second run reuses them),
2. writes the test-driver node XML and ./cgsnap.conf, so that a plain
   `.venv/bin/cgsnap list` from the repository root finds everything,
3. runs `cgsnap create --all-volumes demo` and shows the manifest.
"""

import json
import os
import subprocess
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import lab as testlab  # noqa: E402

STATE = os.path.join(ROOT, ".state")
DEMO = os.path.join(STATE, "demo")
CLOUDS = os.path.join(ROOT, ".devcloud", "clouds.yaml")
CGSNAP = os.path.join(ROOT, ".venv", "bin", "cgsnap")

CONF_TEMPLATE = """\
# Written by `make demo` (tools/demo.py).  cgsnap reads ./cgsnap.conf first.
[DEFAULT]
state_dir = {state}/cgsnap

[libvirt]
# libvirt's test driver: real libvirt API, simulated guest (see tools/demo.py).
uri = {uri}

[openstack]
cloud = devcloud
clouds_yaml = {clouds}
"""


def say(msg):
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def provision(lab):
    path = os.path.join(DEMO, "demo.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        try:
            ok = all(
                lab.user.volumes.get(v).status == "in-use"
                for v in [saved["root"]] + saved["data"])
        except Exception:
            ok = False
        if ok:
            say(f"reusing demo instance {saved['instance_id']} and its 4 volumes")
            return saved
        say("saved demo volumes are gone; making new ones")
    instance_id = str(uuid.uuid4())
    say("creating 4 Cinder volumes (root + 3 data) attached to the demo instance")
    root = lab.create_attached_volumes(instance_id, 1, size_gb=2, prefix="demo-root")[0]
    data = lab.create_attached_volumes(instance_id, 3, size_gb=1, prefix="demo-data")
    saved = {"instance_id": instance_id, "root": root, "data": data}
    os.makedirs(DEMO, exist_ok=True)
    with open(path, "w") as f:
        json.dump(saved, f, indent=2)
    return saved


def main():
    if not os.path.exists(CLOUDS):
        sys.exit("demo: the dev cloud is not set up: run `make demo` (it starts it)")
    lab = testlab.CinderLab(CLOUDS)
    saved = provision(lab)
    uri = testlab.write_node(os.path.join(DEMO, "node.xml"), [
        testlab.domain_xml("demo", saved["instance_id"], saved["root"], saved["data"])])
    # 0644 whatever the umask: as root, cgsnap reads ./cgsnap.conf only if
    # group and others cannot write it (README, Configuration).
    fd = os.open(os.path.join(ROOT, "cgsnap.conf"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(CONF_TEMPLATE.format(state=STATE, uri=uri, clouds=CLOUDS))
    say("wrote ./cgsnap.conf")
    say("$ cgsnap create --all-volumes demo --name 'demo set'")
    proc = subprocess.run([CGSNAP, "create", "--all-volumes", "demo", "--name", "demo set",
                           "-f", "json"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode)
    doc = json.loads(proc.stdout)
    subprocess.run([CGSNAP, "show", doc["id"]], cwd=ROOT, check=True)
    say(f"set {doc['id']}: {len(doc['members'])} members, consistency={doc['consistency']}, "
        f"freeze window {doc['freeze']['window_s'] * 1000:.0f} ms")
    say("try: .venv/bin/cgsnap list -f json   |   .venv/bin/cgsnap show "
        f"{doc['id'][:8]} -f json   |   .venv/bin/cgsnap delete {doc['id'][:8]}")


if __name__ == "__main__":
    main()
