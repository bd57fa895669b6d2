"""oslo.config options, one module per group (the Nova ``nova/conf`` layout).

``CONF`` is the process-wide config object; :func:`register_opts` is called on
import.  :func:`list_opts` feeds ``oslo-config-generator`` (see
``etc/cgsnap/cgsnap-config-generator.conf`` and ``tox -e genconfig``).
"""

from oslo_config import cfg
from oslo_log import log as logging

from cgsnap.conf import default, hooks, libvirt, metrics, openstack, snapshot

CONF = cfg.CONF

_MODULES = (default, hooks, libvirt, metrics, openstack, snapshot)


def register_opts(conf):
    for mod in _MODULES:
        mod.register_opts(conf)


def list_opts():
    out = []
    for mod in _MODULES:
        out.extend(mod.list_opts())
    return out


register_opts(CONF)
logging.register_options(CONF)  # oslo.log's own options (debug, log_file, ...)
