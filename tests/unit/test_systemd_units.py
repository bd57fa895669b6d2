"""The shipped systemd units (etc/systemd/) are valid for systemd and keep what
cgsnap's safety relies on: the caller's cgroup is killed as a whole (the guard
has left it), a stop leaves time for the revert, no sandboxing hides what the
guard needs to leave the cgroup."""

import os
import re
import shutil
import subprocess

import pytest

from cgsnap.conf import libvirt as libvirt_opts
from cgsnap.conf import snapshot as snapshot_opts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = os.path.join(ROOT, "etc", "systemd")
INSTALLED = "/usr/local/bin/cgsnap"


def _unit(name):
    with open(os.path.join(UNITS, name)) as f:
        return f.read()


def _setting(text, key):
    found = re.findall(rf"^{key}=(.*)$", text, re.M)
    return found[-1].strip() if found else None


def _default(module, name):
    return next(o.default for _group, opts in module.list_opts() for o in opts
                if o.name == name)


def test_systemd_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.fail("systemd-analyze is missing (Debian package systemd)", pytrace=False)
    cgsnap = shutil.which("cgsnap") or os.path.join(ROOT, ".venv", "bin", "cgsnap")
    names = []
    for name in sorted(os.listdir(UNITS)):
        text = _unit(name).replace(INSTALLED, cgsnap)
        target = name.replace("@.", "@web1.")  # an instance of each template
        (tmp_path / target).write_text(text)
        names.append(str(tmp_path / target))
    proc = subprocess.run([analyze, "verify", *names], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_the_create_unit_kills_its_cgroup_as_a_whole_and_waits_for_the_revert():
    text = _unit("cgsnap-create@.service")
    assert _setting(text, "KillMode") in (None, "control-group")
    assert _setting(text, "ExecStart").startswith(f"{INSTALLED} create ")
    budget = (_default(libvirt_opts, "freeze_timeout")
              + _default(snapshot_opts, "cleanup_timeout"))
    assert float(_setting(text, "TimeoutStopSec")) > budget
    for hides_what_the_guard_needs in ("PrivateDevices", "ProtectSystem",
                                       "ProtectControlGroups", "RestrictAddressFamilies"):
        assert _setting(text, hides_what_the_guard_needs) is None
    assert "libvirtd.service" in _setting(text, "After")


def test_the_backup_unit_runs_the_host_wide_create_with_the_policy_of_its_config_file():
    text = _unit("cgsnap-backup.service")
    assert _setting(text, "ExecStart").startswith(f"{INSTALLED} create --all-instances ")
    assert "$CGSNAP_BACKUP_OPTIONS" in _setting(text, "ExecStart")
    assert _setting(text, "EnvironmentFile") == "-/etc/default/cgsnap-backup"
    assert _setting(text, "KillMode") in (None, "control-group")
    budget = (_default(libvirt_opts, "freeze_timeout")
              + _default(snapshot_opts, "cleanup_timeout"))
    assert float(_setting(text, "TimeoutStopSec")) > budget
    # the shipped policy parses as the CLI would parse it
    from cgsnap.cli import main as cli
    policy = re.search(r'^CGSNAP_BACKUP_OPTIONS="(.*)"$',
                       open(os.path.join(ROOT, "etc", "default", "cgsnap-backup")).read(),
                       re.M).group(1)
    args = cli._parser().parse_args(["create", "--all-instances", *policy.split()])
    assert args.prune == {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}


def test_the_cron_example_runs_commands_the_cli_accepts():
    from cgsnap.cli import main as cli
    lines = [line for line in open(os.path.join(ROOT, "etc", "cron.d", "cgsnap"))
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(lines) == 3
    for line in lines:
        words = line.split(">")[0].split()
        argv = words[words.index("cgsnap") + 1:]
        cli._parser().parse_args(argv)  # exits 2 (SystemExit) on a bad line
