"""[snapshot] options: how snapshot sets are taken."""

from oslo_config import cfg

group = cfg.OptGroup("snapshot", title="Snapshot-set options")

opts = [
    cfg.BoolOpt("allow_crash_consistent", default=False,
                help="When the guest agent does not answer, take a crash-consistent set "
                     "instead of failing. The manifest then records consistency=crash. "
                     "A freeze that the agent attempts and fails is always an error."),
    cfg.FloatOpt("wait_timeout", default=300.0, min=1.0,
                 help="Deadline in seconds for member snapshots to become available when the "
                      "guest is NOT frozen (crash-consistent sets). Frozen sets use "
                      "[libvirt]freeze_timeout."),
    cfg.FloatOpt("poll_initial_interval", default=0.05, min=0.01,
                 help="First interval in seconds between status polls of the whole set. "
                      "The interval doubles up to poll_max_interval."),
    cfg.FloatOpt("poll_max_interval", default=1.0, min=0.05,
                 help="Longest interval in seconds between status polls when the guest is "
                      "not frozen."),
    cfg.FloatOpt("poll_max_interval_frozen", default=0.1, min=0.01,
                 help="Longest interval between status polls while the guest is frozen: "
                      "every interval of overshoot is added to the freeze window."),
    cfg.IntOpt("max_parallel_creates", default=64, min=1,
               help="Most member snapshot creates in flight at once inside the freeze "
                    "window (threads start lazily; a set of N members uses min(N, this)). "
                    "With adaptive_creates this is the ceiling of the adaptive limit. "
                    "The HTTP connection pool to Cinder is sized to it."),
    cfg.BoolOpt("adaptive_creates", default=True,
                help="Bound the per-volume creates in flight by the latency Cinder shows "
                     "(additive increase while the create call's latency does not rise, "
                     "multiplicative decrease when requests queue), remembered per "
                     "endpoint for the life of the process. A CPU-bound cinder-api "
                     "answers many parallel creates slower than a few; one with many "
                     "workers answers them as fast as one. False: always "
                     "max_parallel_creates at once."),
    cfg.IntOpt("adaptive_creates_start", default=4, min=1,
               help="Creates in flight when a process first talks to an endpoint "
                    "(adaptive_creates); the limit grows from here while latency does "
                    "not rise. Capped by max_parallel_creates."),
    cfg.StrOpt("local_disks", default="skip", choices=[
                   ("skip", "leave file-backed disks out (as Nova's snapshot does); an "
                            "image-backed root is refused unless --exclude-root"),
                   ("qcow2", "capture file-backed disks too: an external disk-only snapshot "
                             "inside the freeze window, a copy to local_dir after the thaw, "
                             "then a block commit back, so the disk chain ends as it began")],
               help="What to do with disks that are not Cinder volumes (plain libvirt/KVM "
                    "hosts)."),
    cfg.StrOpt("local_dir",
               help="Where copies of file-backed disks are kept (local_disks=qcow2). "
                    "Default: <state_dir>/local."),
    cfg.StrOpt("group_snapshots", default="auto", choices=[
                   ("auto", "when every volume member is in one Cinder group, the group "
                            "holds no other volume, and its group type is consistent "
                            "(consistent_group_snapshot_enabled = '<is> True', or listed in "
                            "consistent_group_types), cut them with one group snapshot"),
                   ("never", "always snapshot volumes one by one")],
               help="Whether to use a Cinder group snapshot for the volume members. A group "
                    "snapshot is one API call and is cut by the backend at one instant; the "
                    "freeze still gives filesystem consistency either way."),
    cfg.ListOpt("consistent_group_types", default=[],
                help="Cinder group types (names or ids) to treat as consistent when the "
                     "group type's specs are hidden from this user (Cinder shows group "
                     "specs to admins only by default)."),
    cfg.FloatOpt("quota_cache_seconds", default=10.0, min=0.0,
                 help="How long a process reuses one answer of Cinder's limits call for "
                      "the quota pre-check, adding what it has claimed since. A cached "
                      "answer only ever accepts a set; a set it would refuse is checked "
                      "against a fresh answer. Matters to long-lived callers (a service, "
                      "bench/fleet.py); a CLI run asks once per set. 0 asks every time."),
    cfg.FloatOpt("cleanup_timeout", default=300.0, min=1.0,
                 help="Deadline in seconds for deleting members when a set is reverted or "
                      "deleted."),
]


def register_opts(conf):
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return [(group, opts)]
