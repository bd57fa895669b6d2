"""[metrics] options: the Prometheus textfile that cron runs leave behind."""

from oslo_config import cfg

group = cfg.OptGroup("metrics", title="Prometheus metrics")

opts = [
    cfg.StrOpt("textfile_dir",
               help="Directory of node_exporter's textfile collector "
                    "(--collector.textfile.directory). When set, every create, prune and "
                    "verify run rewrites <textfile_dir>/cgsnap.prom atomically: the last "
                    "good set per instance, freeze windows, sets by status, the last prune "
                    "and verify runs. Alert on time() - cgsnap_last_success_timestamp_seconds."),
]


def register_opts(conf):
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return [(group, opts)]
