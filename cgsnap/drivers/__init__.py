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

NO_CREDENTIALS = ("no OpenStack credentials are configured ([openstack] cloud, --os-cloud, "
                  "OS_CLOUD or OS_AUTH_URL)")


@dataclass
class DriverSet:
    hypervisor: Hypervisor
    volumes: Optional[VolumeBackend]
    images: Optional[object] = None

    def unavailable(self, name):
        return None if getattr(self, name) is not None else f"no {name} backend is installed"


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

    def unavailable(self, name):
        """See :func:`unavailable`."""
        if self._credentials_missing:
            return NO_CREDENTIALS
        if name == "images" and self._no_image_service:
            return "the cloud's service catalog has no image service"
        return None

    @functools.cached_property
    def _credentials_missing(self):
        from keystoneauth1.exceptions import auth_plugins

        from cgsnap import exception
        from cgsnap.conf import CONF
        from cgsnap.drivers import cinder
        try:
            cinder._session_from_config(CONF)
        except exception.ConfigError as e:
            # No cloud named and no OS_* variables: the auth plugin lacks
            # auth_url.  Any other problem shows when the backend is used.
            return isinstance(e.__context__, (auth_plugins.MissingRequiredOptions,
                                              auth_plugins.MissingAuthPlugin))
        return False

    @functools.cached_property
    def _no_image_service(self):
        from keystoneauth1 import exceptions as ks_exc

        from cgsnap.conf import CONF
        from cgsnap.drivers import cinder
        try:
            session, region = cinder._session_from_config(CONF)
            if getattr(region, "get_endpoint", lambda _s: None)("image"):
                return False  # an endpoint override in clouds.yaml
            url = session.get_endpoint(service_type="image",
                                       interface=region.interface or "public",
                                       region_name=region.region_name)
        except ks_exc.EndpointNotFound:
            return True
        except Exception:  # noqa: BLE001 - any other problem shows on use
            return False
        return url is None


def unavailable(name, driver_set=None):
    """Why backend ``name`` (``"volumes"`` or ``"images"``) is absent on this
    host, or None.  Only an absence counts: no OpenStack credentials are
    configured at all, or the cloud has no such service.  Callers that can do
    without the backend (gc, deleting a set with no members there) skip it
    and say why; any other problem (wrong password, endpoint down) stays an
    error, raised when the backend is used."""
    drv = driver_set or get()
    check = getattr(drv, "unavailable", None)
    if check is None:  # a test's or a benchmark's own driver set
        return None if getattr(drv, name, None) is not None else f"no {name} backend"
    return check(name)


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
