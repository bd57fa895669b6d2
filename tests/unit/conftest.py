"""Unit fixtures: libvirt's test driver for the guest, the fake backends
(cgsnap/drivers/fake.py) for storage."""

import pytest

from cgsnap import drivers
from cgsnap.drivers import fake, libvirt_driver

from .. import lab as testlab


class Guest:
    """A test-driver guest with N fake volumes (volume-backed root)."""

    def __init__(self, tmp_path, n_volumes=3, root_volume=True, name="guest1", **backend_kw):
        self.backend = fake.FakeVolumeBackend(**backend_kw)
        self.id = testlab.new_instance_id()
        self.name = name
        self.root_volume_id = (self.backend.add_volume(attached_to=[self.id], size_gb=2)
                               if root_volume else None)
        self.volume_ids = [self.backend.add_volume(attached_to=[self.id])
                           for _ in range(n_volumes)]
        self.uri = testlab.write_node(
            str(tmp_path / "node.xml"),
            [testlab.domain_xml(name, self.id, self.root_volume_id, self.volume_ids)])
        self.hypervisor = libvirt_driver.LibvirtHypervisor(self.uri)
        self.images = fake.FakeImageBackend()
        drivers.override(drivers.DriverSet(self.hypervisor, self.backend, self.images))

    @property
    def domain(self):
        return libvirt_driver.connection(self.uri).lookupByUUIDString(self.id)

    def frozen_count(self):
        """Filesystems still frozen (thaws them: use at the end of a test)."""
        return self.domain.fsThaw()

@pytest.fixture
def guest(tmp_path):
    return Guest(tmp_path)

@pytest.fixture
def cli_run(guest, tmp_path):
    """The CLI in-process with a config file of its own: (exit code, stdout, stderr)."""
    import io

    from cgsnap.cli import main as cli
    conf = tmp_path / "cgsnap.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/clistate\n[libvirt]\nuri = {guest.uri}\n")

    def _run(*argv, config=True):
        out, err = io.StringIO(), io.StringIO()
        args = (["--config-file", str(conf)] if config else []) + list(argv)
        rc = cli.run(args, stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()
    return _run


@pytest.fixture
def make_guest(tmp_path):
    return lambda **kw: Guest(tmp_path, **kw)

