"""[DEFAULT] options: where cgsnap keeps its state."""

import socket

from oslo_config import cfg

opts = [
    cfg.StrOpt("host", default=socket.gethostname(), sample_default="<this machine's hostname>",
               help="Name of this cgsnap host. Every snapshot set records the host that made "
                    "it; with a catalog shared by several hosts, 'cgsnap recover' acts only "
                    "on this host's sets, and a create only finalizes a set this host still "
                    "owns. Give each conductor on one machine its own name (--host)."),
    cfg.StrOpt("state_dir", default="~/.local/state/cgsnap",
               help="Directory for cgsnap's catalog, flow logbooks and per-instance lock files. "
                    "'~' is expanded. Must be on a local filesystem (locks use flock)."),
    cfg.StrOpt("catalog_connection",
               help="SQLAlchemy URL of the manifest catalog. Default: SQLite file "
                    "<state_dir>/catalog.db. Any SQLAlchemy URL works, e.g. "
                    "postgresql+psycopg2://user@127.0.0.1/cgsnap.",
               secret=True),
    cfg.StrOpt("persistence_connection",
               help="SQLAlchemy URL of the TaskFlow logbook store (flow persistence). "
                    "Default: SQLite file <state_dir>/flows.db.",
               secret=True),
    cfg.IntOpt("logbook_retention_days", default=30, min=0,
               help="'cgsnap gc' removes the TaskFlow logbooks of failed flows older than "
                    "this many days (a flow that succeeds removes its own at once; the "
                    "logbook of a set still creating or deleting is always kept)."),
    cfg.FloatOpt("lock_wait", default=0.0, min=0.0,
                 help="Seconds to wait for another cgsnap operation on the same instance to "
                      "finish before giving up with exit code 7. 0 means do not wait."),
]


def register_opts(conf):
    conf.register_opts(opts)


def list_opts():
    return [(None, opts)]
