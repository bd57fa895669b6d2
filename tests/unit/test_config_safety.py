"""./cgsnap.conf comes from the current directory: when cgsnap runs as root it
reads that file only if root owns it and neither group nor others can write
it.  Otherwise the file could redirect state_dir or local_dir (and so what gc
deletes) for whoever can write the directory root happens to be in."""

import argparse
import io
import os

import pytest

from cgsnap.cli import config as cli_config
from cgsnap.cli import main as cli
from cgsnap.conf import CONF

NOBODY = 65534


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working directory and an empty HOME (no ~/.cgsnap/cgsnap.conf);
    state_dir comes from the config files, not from the shared fixture."""
    assert os.geteuid() == 0, "these tests chown files: run them as root"
    CONF.clear_override("state_dir")
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    return work


def _conf(path, state_dir, mode=0o644, uid=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[DEFAULT]\nstate_dir = {state_dir}\n")
    os.chown(path, uid, 0)
    os.chmod(path, mode)
    return path


def _load():
    err = io.StringIO()
    args = argparse.Namespace(config_file=None, os_cloud=None, verbose=False, debug=False)
    cli_config.load(args, err)
    return CONF.state_dir, err.getvalue()


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o400])
def test_root_reads_its_own_unwritable_conf_from_cwd(cwd, mode):
    _conf(cwd / "cgsnap.conf", "/srv/demo-state", mode)
    state_dir, err = _load()
    assert state_dir == "/srv/demo-state"
    assert err == ""


@pytest.mark.parametrize("uid,mode,why", [
    (NOBODY, 0o644, "owned by uid 65534"),
    (0, 0o664, "writable by group"),
    (0, 0o646, "writable by others"),
    (NOBODY, 0o666, "owned by uid 65534"),
])
def test_root_ignores_a_conf_in_cwd_it_cannot_trust(cwd, uid, mode, why):
    planted = _conf(cwd / "cgsnap.conf", "/tmp/planted-state", mode, uid)
    state_dir, err = _load()
    assert state_dir != "/tmp/planted-state"
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cgsnap: warning: ignoring {planted}: "), err
    standard = cli_config.cfg.find_config_files(project="cgsnap")[:1]  # /etc/cgsnap/...
    instead = f"using {standard[0]} instead" if standard else "using the built-in defaults"
    assert why in lines[0] and lines[0].endswith(instead), err


def test_the_warning_names_the_file_used_instead(cwd, tmp_path):
    _conf(cwd / "cgsnap.conf", "/tmp/planted-state", 0o644, NOBODY)
    fallback = _conf(tmp_path / "home" / ".cgsnap" / "cgsnap.conf", "/srv/home-state")
    state_dir, err = _load()
    assert state_dir == "/srv/home-state"
    assert err.count("\n") == 1 and f"using {fallback} instead" in err, err


def test_a_symlink_to_an_untrusted_file_is_not_trusted(cwd, tmp_path):
    target = _conf(tmp_path / "elsewhere" / "x.conf", "/tmp/planted-state", 0o644, NOBODY)
    os.symlink(target, cwd / "cgsnap.conf")
    state_dir, err = _load()
    assert state_dir != "/tmp/planted-state"
    assert "owned by uid 65534" in err, err


def test_a_non_root_user_still_reads_the_conf_in_cwd(cwd, monkeypatch):
    _conf(cwd / "cgsnap.conf", "/tmp/own-state", 0o664, NOBODY)
    monkeypatch.setattr(cli_config.os, "geteuid", lambda: NOBODY)
    state_dir, err = _load()
    assert state_dir == "/tmp/own-state"
    assert err == ""


def test_cgsnap_config_and_config_file_are_not_second_guessed(cwd, monkeypatch, tmp_path):
    # The caller chose these paths explicitly; only the implicit ./cgsnap.conf is checked.
    chosen = _conf(tmp_path / "chosen.conf", "/tmp/chosen-state", 0o664, NOBODY)
    monkeypatch.setenv("CGSNAP_CONFIG", str(chosen))
    assert _load() == ("/tmp/chosen-state", "")


def test_the_cli_does_not_use_a_planted_state_dir(cwd, tmp_path):
    planted = tmp_path / "planted"
    _conf(cwd / "cgsnap.conf", str(planted), 0o666, NOBODY)
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["list", "-f", "json"], out, err)
    assert rc == 0, err.getvalue()
    assert not planted.exists()
    assert err.getvalue().startswith("cgsnap: warning: ignoring ")
