"""Functional tier: the real CLI, in-process, against the real dev cloud
(Keystone password auth + Cinder 29) and libvirt's test driver.

The CLI runs in-process so the test shares libvirt's test-driver connection
with it and can read the guest's freeze count afterwards.  If the dev cloud is
not running this tier fails loudly: `make functional` starts it.
"""

import io
import os
import uuid

import pytest

from cgsnap import exception, faults
from cgsnap.cli import main as cli
from cgsnap.drivers import libvirt_driver

from .. import lab as testlab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLOUDS = os.environ.get("CGSNAP_TEST_CLOUDS_YAML", os.path.join(ROOT, ".devcloud", "clouds.yaml"))
# The cloud entries of that file: a member user's and the test lab's admin.
# `make functional-production` points them at the production shape.
CLOUD = os.environ.get("CGSNAP_TEST_CLOUD", "devcloud")
ADMIN_CLOUD = os.environ.get("CGSNAP_TEST_ADMIN_CLOUD", "devcloud-admin")


@pytest.fixture(scope="session")
def lab():
    if not os.path.exists(CLOUDS):
        pytest.fail(f"dev cloud not set up ({CLOUDS} missing): run `make functional`",
                    pytrace=False)
    try:
        lab = testlab.CinderLab(CLOUDS, cloud=CLOUD, admin_cloud=ADMIN_CLOUD)
        lab.user.limits.get()
    except Exception as e:  # noqa: BLE001 - report any reason the cloud is unusable
        pytest.fail(f"dev cloud not reachable: {e} (run `tools/devcloud/devcloud.sh start`)",
                    pytrace=False)
    return lab


class Instance:
    """A test-driver domain whose disks are real, attached Cinder volumes."""

    def __init__(self, lab, tmp_path, n_data, name, group_type=None):
        self.lab = lab
        self.id = str(uuid.uuid4())
        self.name = name
        # With group_type, every volume (root too) is in one group of that type.
        self.group_id = lab.create_group(group_type, f"{name}-group") if group_type else None
        self.root_volume_id = lab.create_attached_volumes(self.id, 1, 1, f"{name}-root",
                                                          group_id=self.group_id)[0]
        self.volume_ids = lab.create_attached_volumes(self.id, n_data, 1, f"{name}-data",
                                                      group_id=self.group_id)
        self.uri = testlab.write_node(str(tmp_path / "node.xml"), [
            testlab.domain_xml(name, self.id, self.root_volume_id, self.volume_ids)])
        self.conf = tmp_path / "cgsnap.conf"
        self.conf.write_text(
            f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
            f"[libvirt]\nuri = {self.uri}\nfreeze_timeout = 30\n"
            f"[openstack]\ncloud = {CLOUD}\nclouds_yaml = {CLOUDS}\n")

    def cgsnap(self, *argv):
        """Run the CLI; return (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        rc = cli.run(["--config-file", str(self.conf), *argv], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    def frozen_count(self):
        """Filesystems still frozen in the test driver (0 = thawed)."""
        return libvirt_driver.connection(self.uri).lookupByUUIDString(self.id).fsThaw()

    def add_config(self, text):
        self.conf.write_text(self.conf.read_text() + text)

    def cinder_group_snapshots(self):
        """This instance's group snapshots, as the admin sees them in Cinder."""
        if not self.group_id:
            return []
        return [g for g in self.lab.admin.group_snapshots.list(search_opts={"all_tenants": 1})
                if g.group_id == self.group_id]

    def cinder_snapshots(self, set_id):
        """Snapshots carrying this set id, as the admin sees them in Cinder."""
        return [s for s in self.lab.admin.volume_snapshots.list(search_opts={"all_tenants": 1})
                if (s.metadata or {}).get("cgsnap_set_id") == set_id]

    def all_volume_ids(self):
        return [self.root_volume_id] + self.volume_ids


@pytest.fixture
def make_instance(lab, tmp_path):
    made = []

    def _make(n_data=3, name="fn-guest", group_type=None):
        inst = Instance(lab, tmp_path, n_data, name, group_type)
        made.append(inst)
        return inst

    yield _make
    faults.reset()
    for inst in made:
        lab.delete_volumes(inst.all_volume_ids())


def quiesce_failure(_point):
    raise exception.QuiesceFailed("guest agent freeze failed on fn-guest: injected")


@pytest.fixture(autouse=True)
def config_file_owns_the_state(clean_conf):
    """These tiers give cgsnap a real config file, and subprocesses read it:
    drop the unit tier's state-dir overrides so in-process runs agree."""
    from cgsnap.conf import CONF
    CONF.clear_override("state_dir")
    CONF.clear_override("persistence_connection")
