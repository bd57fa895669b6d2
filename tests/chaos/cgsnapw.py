"""The chaos soak's CLI wrapper: ``tests.faultcli`` plus three test-only hooks.

Like :mod:`tests.faultcli` it arms ``CGSNAP_FAULT`` and runs the CLI; an
installed cgsnap has none of this.  Extra hooks, each a comma-separated list:

``CHAOS_BARRIER="point=DIR"``
    the first time ``point`` fires, write ``DIR/reached`` and wait (up to
    60 s) for ``DIR/go``: the runner makes the world misbehave for real
    (stops Cinder, restarts libvirtd, kills the cgroup, stalls the agent...)
    at exactly that moment of the flow, then lets it go on.
``CHAOS_RAISE="point=N"``
    raise an injected fault on the first N hits of ``point`` (a thaw that fails
    N times, then succeeds).
``CHAOS_FREEZE_REPORT="minus1"|"zero"``
    the agent's freeze answer reports one filesystem fewer (or none) than it
    really froze.
"""

import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = [sys.executable, "-P", "-c",
           f"import sys; sys.path.insert(0, {ROOT!r}); "
           "from tests.chaos.cgsnapw import main; main()"]


def _items(var):
    for item in filter(None, (s.strip() for s in os.environ.get(var, "").split(","))):
        name, _, value = item.partition("=")
        yield name, value


def _barrier(directory):
    fired = threading.Event()

    def hit(name):
        if fired.is_set():
            return
        fired.set()
        with open(os.path.join(directory, "reached.tmp"), "w") as f:
            f.write(f"{os.getpid()} {name} {time.time():.3f}\n")
        os.replace(os.path.join(directory, "reached.tmp"), os.path.join(directory, "reached"))
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(directory, "go")):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    return hit


def _raise_n(n):
    hits = [0]
    lock = threading.Lock()

    def hit(name):
        from cgsnap import exception
        with lock:
            hits[0] += 1
            mine = hits[0]
        if mine <= n:
            raise exception.InjectedFault(f"chaos: {name} failed ({mine} of {n})")
    return hit


def _patch_freeze_report(mode):
    from cgsnap.drivers import libvirt_driver
    real = libvirt_driver.LibvirtHypervisor.freeze

    def freeze(self, instance_id):
        n = real(self, instance_id)
        return 0 if mode == "zero" else max(0, n - 1)
    libvirt_driver.LibvirtHypervisor.freeze = freeze


def arm():
    from cgsnap import faults
    from tests.faultcli import arm_from_env
    arm_from_env()
    for point, directory in _items("CHAOS_BARRIER"):
        faults.arm(point, _barrier(directory))
    for point, n in _items("CHAOS_RAISE"):
        faults.arm(point, _raise_n(int(n)))
    mode = os.environ.get("CHAOS_FREEZE_REPORT")
    if mode:
        _patch_freeze_report(mode)


def main():
    import faulthandler
    import signal
    # the harness asks a create that hung for its stacks before it kills it
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    arm()
    from cgsnap.cli import main as cli
    sys.argv[0] = "cgsnap"
    cli.main()


if __name__ == "__main__":
    main()
