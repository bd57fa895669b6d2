"""Test machinery: run the cgsnap CLI (or any cgsnap entry point) with fault
points armed from the ``CGSNAP_FAULT`` environment variable.

An installed cgsnap never reads ``CGSNAP_FAULT``: only this wrapper, which is
not part of the package, arms fault points.  Subprocess tests run::

    python -m tests.faultcli [cgsnap arguments ...]

from the repository root (see :data:`COMMAND`), with for example
``CGSNAP_FAULT="hypervisor.freeze:raise,task.ThawGuest:hang=30"``.  The spec
syntax is :func:`cgsnap.faults.arm_spec`'s.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# argv prefix that starts the CLI with faults armed; cwd-independent.
COMMAND = [sys.executable, "-P", "-c",
           f"import sys; sys.path.insert(0, {ROOT!r}); "
           "from tests.faultcli import main; main()"]


def arm_from_env():
    from cgsnap import faults
    faults.arm_spec(os.environ.get("CGSNAP_FAULT", ""))


def main():
    arm_from_env()
    from cgsnap.cli import main as cli
    sys.argv[0] = "cgsnap"
    cli.main()


if __name__ == "__main__":
    main()
