"""Fault points are test machinery: an installed cgsnap never arms them from
its environment; only the wrapper under tests/ (tests/faultcli.py) does."""

import os
import re
import signal
import subprocess
import sys

import pytest

from cgsnap import exception, faults
from tests import faultcli

# The console script pip installed next to this interpreter (.venv/bin/cgsnap).
CGSNAP = os.path.join(os.path.dirname(sys.executable), "cgsnap")
# `create test` on libvirt's stock test driver passes both points, then stops at
# a pre-check (its disk is file-backed): a normal, documented failure.
SPEC = "hypervisor.get_instance:kill,task.DiscoverInstance:kill"


def _run(argv_prefix, tmp_path, spec):
    conf = tmp_path / "cgsnap.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n"
                    "[libvirt]\nuri = test:///default\n")
    env = dict(os.environ, CGSNAP_FAULT=spec)
    return subprocess.run(argv_prefix + ["--config-file", str(conf), "create", "test"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_installed_cgsnap_ignores_CGSNAP_FAULT_in_its_environment(tmp_path):
    assert os.path.exists(CGSNAP), CGSNAP
    proc = _run([CGSNAP], tmp_path, SPEC)
    assert proc.returncode != -signal.SIGKILL, "an environment variable killed cgsnap"
    assert proc.returncode > 0 and proc.stderr.startswith("cgsnap: error: "), proc.stderr


def test_the_test_wrapper_arms_faults_from_CGSNAP_FAULT(tmp_path):
    proc = _run(list(faultcli.COMMAND), tmp_path, SPEC)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)


def test_the_test_wrapper_without_a_spec_runs_the_cli(tmp_path):
    proc = _run(list(faultcli.COMMAND), tmp_path, "")
    # Same outcome as the installed script: the pre-check, not a fault.
    assert proc.returncode > 0 and proc.stderr.startswith("cgsnap: error: "), proc.stderr


def test_point_does_not_read_the_environment(monkeypatch):
    monkeypatch.setenv("CGSNAP_FAULT", "unit.env:raise")
    faults.point("unit.env")  # no InjectedFault: the product never reads the variable
    faults.reset()
    faults.point("unit.env")


def test_arm_spec_parses_the_spec_syntax():
    faults.arm_spec(" unit.a:raise@2, unit.b , unit.c:hang=0.01 ,")
    faults.point("unit.a")  # fires on the 2nd hit only
    with pytest.raises(exception.InjectedFault, match="unit.a"):
        faults.point("unit.a")
    with pytest.raises(exception.InjectedFault, match="unit.b"):  # no action: raise
        faults.point("unit.b")
    faults.point("unit.c")  # a short hang, then on
    faults.reset()
    faults.point("unit.b")


def test_arm_spec_rejects_an_unknown_action():
    with pytest.raises(ValueError, match="explode"):
        faults.arm_spec("unit.d:explode")


def test_the_package_ships_no_test_machinery():
    import importlib.util
    import pathlib

    import cgsnap
    # Dev-cloud admin helpers (state resets, quota changes) live in tests/lab.py.
    assert importlib.util.find_spec("cgsnap.testing") is None
    # The in-process storage fake is drivers/fake.py, not a name that reads as --memory.
    assert importlib.util.find_spec("cgsnap.drivers.memory") is None
    assert importlib.util.find_spec("cgsnap.drivers.fake") is not None
    pkg = pathlib.Path(cgsnap.__file__).parent
    # No code reads the fault variable (a docstring may name it), no admin helper.
    needles = re.compile(r"""["']CGSNAP_FAULT["']|CinderLab|\.reset_state\(""")
    offenders = [str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                 if needles.search(p.read_text())]
    assert offenders == []
