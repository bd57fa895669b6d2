"""[openstack] options: credentials and service endpoints."""

from oslo_config import cfg

group = cfg.OptGroup("openstack", title="OpenStack credentials and services")

opts = [
    cfg.StrOpt("cloud",
               help="Cloud name in clouds.yaml (like 'openstack --os-cloud'). Default: the "
                    "OS_CLOUD environment variable; when neither is set the OS_* variables "
                    "(OS_AUTH_URL, OS_USERNAME, ...) are used."),
    cfg.StrOpt("clouds_yaml",
               help="Path of the clouds.yaml file. Default: the standard locations "
                    "(./clouds.yaml, ~/.config/openstack/clouds.yaml, /etc/openstack/) or "
                    "OS_CLIENT_CONFIG_FILE."),
    cfg.StrOpt("region_name", help="Region to use when the cloud has several."),
    cfg.StrOpt("volume_api_version", default="3.71",
               help="Cinder API microversion. 3.71 lets Cinder snapshot an in-use volume "
                    "without 'force'; 3.44+ is needed for attachments."),
    cfg.FloatOpt("api_timeout", default=60.0, min=1.0,
                 help="Timeout in seconds of each HTTP request to OpenStack services."),
]


def register_opts(conf):
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return [(group, opts)]
