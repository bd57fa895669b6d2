"""Drivers: the hypervisor (libvirt) and storage (Cinder, ...) behind small interfaces.

Tasks never hold client objects in the flow store; they ask :func:`get` for
the process-wide :class:`DriverSet`, built lazily from configuration.  Tests
and benchmarks install their own with :func:`override`.
"""

import functools
import threading
from dataclasses import dataclass
from typing import Optional

from cgsnap.drivers.base import Hypervisor, VolumeBackend


@dataclass
class DriverSet:
    hypervisor: Hypervisor
    volumes: Optional[VolumeBackend]
    images: Optional[object] = None


class _ConfiguredDriverSet:
    """Builds each driver from configuration on first use: listing the catalog
    needs neither libvirt nor Cinder credentials."""

    @functools.cached_property
    def hypervisor(self):
        from cgsnap.conf import CONF
        from cgsnap.drivers import libvirt_driver
        return libvirt_driver.LibvirtHypervisor(CONF.libvirt.uri, CONF.libvirt.agent_timeout)

    @functools.cached_property
    def volumes(self):
        from cgsnap.conf import CONF
        from cgsnap.drivers import cinder
        return cinder.CinderBackend.from_config(CONF)

    @functools.cached_property
    def images(self):
        from cgsnap.conf import CONF
        from cgsnap.drivers import glance
        return glance.GlanceBackend.from_config(CONF)


_lock = threading.Lock()
_current = None


def get():
    global _current
    with _lock:
        if _current is None:
            _current = _from_config()
        return _current


def override(driver_set):
    """Use ``driver_set`` for this process (None: rebuild from config on next get())."""
    global _current
    with _lock:
        old, _current = _current, driver_set
    _close(old)


def _close(driver_set):
    """Close the HTTP sessions of the drivers a set built (kept-alive
    connections would otherwise linger until garbage collection)."""
    if driver_set is None:
        return
    for name in ("volumes", "images"):
        drv = vars(driver_set).get(name)  # only what was ever built
        if hasattr(drv, "close"):
            drv.close()


def _from_config():
    return _ConfiguredDriverSet()
