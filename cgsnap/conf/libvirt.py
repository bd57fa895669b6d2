"""[libvirt] options: the hypervisor connection and the guest agent."""

from oslo_config import cfg

group = cfg.OptGroup("libvirt", title="libvirt hypervisor options")

opts = [
    cfg.StrOpt("uri", default="qemu:///system",
               help="libvirt connection URI. 'test:///path/node.xml' selects libvirt's test "
                    "driver (used by the demo and the fast tests)."),
    cfg.IntOpt("agent_timeout", default=10, min=1,
               help="Seconds every guest-agent command (ping, freeze, thaw) may take before "
                    "libvirt gives up (virDomainAgentSetResponseTimeout)."),
    cfg.FloatOpt("freeze_timeout", default=10.0, min=0.5,
                 help="Longest time the guest may stay frozen, in seconds. The snapshot wait "
                      "inside the freeze is cut at this deadline and the set fails, so the "
                      "guest is thawed. Windows VSS itself holds writes for at most 10 s; Linux "
                      "qemu-ga never thaws on its own."),
    cfg.BoolOpt("thaw_guard", default=True,
                help="Before freezing (or pausing, with --memory), start a guard process "
                     "that thaws (resumes) the guest if cgsnap dies (even by SIGKILL, or "
                     "with its whole service cgroup) or the freeze outlives freeze_timeout "
                     "plus thaw_guard_margin. The guard leaves cgsnap's cgroup (systemd-run "
                     "--scope where systemd is PID 1, else a cgroup of its own through "
                     "cgroupfs), reconnects to libvirtd, and retries until the guest agent "
                     "reports the guest thawed or the domain is gone. It is disarmed only "
                     "by a thaw the agent confirms. A set whose guard fired is failed."),
    cfg.FloatOpt("thaw_guard_margin", default=1.0, min=0.1,
                 help="Seconds the guard waits after freeze_timeout before it thaws, so that "
                      "cgsnap's own deadline normally acts first."),
]


def register_opts(conf):
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return [(group, opts)]
