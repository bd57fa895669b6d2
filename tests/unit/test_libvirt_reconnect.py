"""A long-lived process (the e2e tier, a service) keeps its libvirt
connection; after libvirtd restarts, that connection is broken even though
``isAlive()`` may still say yes.  The first call then fails with a
transport error ("Cannot write data: Broken pipe"); the driver must open a
new connection and retry once instead of failing the operation."""

import libvirt
import pytest

from cgsnap import exception
from cgsnap.drivers import libvirt_driver


class _Err(libvirt.libvirtError):
    def __init__(self, code, domain):
        Exception.__init__(self, "Cannot write data: Broken pipe")
        self._code, self._domain = code, domain

    def get_error_code(self):
        return self._code

    def get_error_domain(self):
        return self._domain

    def get_error_message(self):
        return str(self)


class _Conn:
    def __init__(self, fail):
        self.fail, self.closed = fail, False

    def isAlive(self):
        return 1  # a broken socket is not always noticed

    def lookupByName(self, name):
        if self.fail:
            raise self.fail
        return f"dom:{name}"

    def close(self):
        self.closed = True


def _install(monkeypatch, first, second):
    opened = [second]
    monkeypatch.setitem(libvirt_driver._conns, "qemu:///system", first)
    monkeypatch.setattr(libvirt_driver.libvirt, "open",
                        lambda uri: opened.pop(0))
    return libvirt_driver.LibvirtHypervisor("qemu:///system")


def test_a_broken_connection_is_reopened_once(monkeypatch):
    broken = _Conn(_Err(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC))
    hyp = _install(monkeypatch, broken, _Conn(None))
    assert hyp._domain("g1") == "dom:g1"
    assert broken.closed


def test_a_missing_domain_is_not_retried(monkeypatch):
    hyp = _install(monkeypatch, _Conn(_Err(libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_FROM_QEMU)),
                   _Conn(None))
    with pytest.raises(exception.InstanceNotFound):
        hyp._domain("g1")
