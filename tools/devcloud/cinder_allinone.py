# ruff: noqa: E402, E702, I001
"""Run cinder-api, cinder-scheduler and cinder-volume in ONE process.

Dev-cloud only.  Why one process:
  * SQLite: three processes writing the same DB give "database is locked".
  * oslo.messaging ``fake://`` transport is in-memory, so RPC between the
    services only works if they share a process.

Usage: python cinder_allinone.py --config-file cinder.conf
"""

from cinder import monkey_patch; monkey_patch.patch()  # noqa: E702,I100

import logging as python_logging  # noqa: E402
import sys  # noqa: E402

from oslo_config import cfg  # noqa: E402
from oslo_log import log as logging  # noqa: E402
from oslo_service import service as oslo_service  # noqa: E402

from cinder import i18n  # noqa: E402
i18n.enable_lazy()
from cinder.common import config  # noqa: E402
from cinder.common import constants  # noqa: E402
from cinder import coordination  # noqa: E402
from cinder import objects  # noqa: E402
from cinder import rpc  # noqa: E402
from cinder import service  # noqa: E402
from cinder import version  # noqa: E402

CONF = cfg.CONF


def main():
    objects.register_all()
    CONF(sys.argv[1:], project='cinder', version=version.version_string())
    config.set_middleware_defaults()
    logging.setup(CONF, 'cinder')
    python_logging.captureWarnings(True)
    log = logging.getLogger('cinder_allinone')

    coordination.COORDINATOR.start()
    rpc.init(CONF)

    # ServiceLauncher runs every service in this process (greenthreads),
    # unlike ProcessLauncher which forks one child per service.
    launcher = oslo_service.ServiceLauncher(CONF, restart_method='mutate')

    launcher.launch_service(
        service.Service.create(binary=constants.SCHEDULER_BINARY))

    for backend in filter(None, CONF.enabled_backends):
        cfg.CONF.register_opt(cfg.StrOpt('backend_host'), group=backend)
        host = '%s@%s' % (CONF.host, backend)
        launcher.launch_service(service.Service.create(
            host=host, service_name=backend,
            binary=constants.VOLUME_BINARY, coordination=True))

    launcher.launch_service(service.WSGIService('osapi_volume'), workers=1)
    log.info('cinder all-in-one started (api+scheduler+volume)')
    try:
        launcher.wait()
    except KeyboardInterrupt:
        launcher.stop()
    rpc.cleanup()


if __name__ == '__main__':
    main()
