"""[hooks] pre_create / post_create on the test driver: what a hook sees,
a failing or hanging pre-hook refuses the set before anything is recorded or
frozen, the post-hook runs after failures too, and its own failure changes
nothing but a warning."""

import json
import os
import stat

import pytest


def _hook(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def hooked(cli_run, tmp_path):
    """cli_run with [hooks] set; each hook appends its environment to a file."""
    conf = tmp_path / "cgsnap.conf"
    base = conf.read_text()
    log = tmp_path / "hooks.log"

    def _run(*argv, pre="exit 0", post="exit 0", timeout=10):
        env_dump = ('env | grep ^CGSNAP_ | sort | tr "\\n" "\\t" >> ' + str(log)
                    + '; echo "cwd=$(pwd)" >> ' + str(log) + "\n")
        text = base + "[hooks]\n"
        if pre is not None:
            text += f"pre_create = {_hook(tmp_path, 'pre', env_dump + pre)}\n"
        if post is not None:
            text += f"post_create = {_hook(tmp_path, 'post', env_dump + post)}\n"
        conf.write_text(text + f"timeout = {timeout}\n")
        return cli_run(*argv)

    def calls():
        """One dict per hook run: its CGSNAP_* variables and cwd (one line each)."""
        if not log.exists():
            return []
        return [dict(kv.split("=", 1) for kv in line.split("\t") if kv)
                for line in log.read_text().splitlines()]
    _run.calls = calls
    return _run


def test_hooks_see_the_set_and_its_outcome(hooked, guest):
    rc, out, err = hooked("create", "--all-volumes", guest.name, "--label", "tier=gold",
                          "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    pre, post = hooked.calls()
    assert pre["CGSNAP_HOOK"] == "pre_create" and post["CGSNAP_HOOK"] == "post_create"
    for env in (pre, post):
        assert env["CGSNAP_SET_ID"] == doc["id"]
        assert env["CGSNAP_INSTANCE_ID"] == guest.id
        assert env["CGSNAP_INSTANCE_NAME"] == guest.name
        assert json.loads(env["CGSNAP_LABELS"]) == {"tier": "gold"}
        assert env["cwd"] == "/"
    assert "CGSNAP_STATUS" not in pre
    assert (post["CGSNAP_STATUS"], post["CGSNAP_CONSISTENCY"], post["CGSNAP_EXIT_CODE"]) == \
        ("available", "filesystem", "0")


def test_a_failing_pre_hook_refuses_before_anything_is_recorded_or_frozen(hooked, guest):
    from cgsnap import api
    rc, _out, err = hooked("create", "--all-volumes", guest.name,
                           pre="echo 'maintenance window' >&2; exit 3")
    assert rc == 4
    assert err.count("\n") == 1 and "pre_create hook" in err and "exited 3" in err
    assert "maintenance window" in err and "nothing was frozen or recorded" in err
    assert api.list_snapshot_sets() == []
    assert guest.backend.calls["create"] == 0 and not guest.backend.snapshots
    assert guest.frozen_count() == 0
    post = hooked.calls()[1]
    assert (post["CGSNAP_STATUS"], post["CGSNAP_EXIT_CODE"]) == ("refused", "4")


def test_a_hanging_pre_hook_is_killed_with_what_it_started(hooked, guest, tmp_path):
    marker = tmp_path / "child.pid"
    rc, _out, err = hooked("create", guest.name, timeout=1,
                           pre=f"sleep 300 & echo $! > {marker}; wait")
    assert rc == 4 and "did not finish in 1s" in err
    pid = int(marker.read_text())
    assert not _alive_after(pid, 5), "the hook's child outlived the timeout"


def _alive_after(pid, seconds):
    import time
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


def test_the_post_hook_runs_after_a_failed_set(hooked, guest):
    guest.backend.fail_volume_ids.add(guest.volume_ids[0])
    rc, _out, err = hooked("create", "--all-volumes", guest.name)
    assert rc == 6, err
    post = hooked.calls()[1]
    assert (post["CGSNAP_STATUS"], post["CGSNAP_EXIT_CODE"]) == ("failed", "6")
    assert "went to 'error'" in post["CGSNAP_ERROR"]


def test_a_failing_post_hook_is_a_warning_and_changes_nothing(hooked, guest):
    from cgsnap import api
    rc, out, err = hooked("create", guest.name, "-f", "json", post="exit 5")
    assert rc == 0
    assert "cgsnap: warning: post_create hook" in err and "exited 5" in err
    assert api.show_snapshot_set(json.loads(out)["id"])["status"] == "available"


def test_a_hook_that_cannot_start_refuses_with_a_reason(cli_run, tmp_path, guest):
    conf = tmp_path / "cgsnap.conf"
    conf.write_text(conf.read_text() + f"[hooks]\npre_create = {tmp_path}/missing\n")
    rc, _out, err = cli_run("create", guest.name)
    assert rc == 4 and "could not be started" in err and "Traceback" not in err
