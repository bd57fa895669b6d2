"""[hooks] options: host-side executables run around each create."""

from oslo_config import cfg

group = cfg.OptGroup("hooks", title="Host-side hooks around each create")

opts = [
    cfg.StrOpt("pre_create",
               help="Executable run before a create records anything (after the instance "
                    "lock is taken). A non-zero exit or a timeout refuses the set (exit 4): "
                    "nothing is frozen or recorded. Environment: CGSNAP_HOOK, CGSNAP_SET_ID, "
                    "CGSNAP_INSTANCE_ID, CGSNAP_INSTANCE_NAME, CGSNAP_LABELS (JSON). To "
                    "quiesce applications inside the guest, use qemu-ga's own fsfreeze hook "
                    "instead (/etc/qemu/fsfreeze-hook in the guest)."),
    cfg.StrOpt("post_create",
               help="Executable run after every create, also after a failed or refused one, "
                    "with CGSNAP_STATUS (available, failed or refused), CGSNAP_CONSISTENCY, "
                    "CGSNAP_EXIT_CODE and CGSNAP_ERROR added. Its failure is reported as a "
                    "warning and changes neither the set nor the exit code."),
    cfg.FloatOpt("timeout", default=60.0, min=0.1,
                 help="Seconds a hook may run; then its process group is killed (a pre-hook "
                      "that times out refuses the set)."),
]


def register_opts(conf):
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return [(group, opts)]
