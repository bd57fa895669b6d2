"""The CLI in-process on the test driver + in-memory storage: output formats,
exit codes, one-line errors."""

import json

import pytest
import yaml

from cgsnap import exception, faults


@pytest.fixture
def run(cli_run):
    return cli_run


def test_help_and_version(run, capsys):
    assert run("--help")[0] == 0
    assert "exit codes" in capsys.readouterr().out
    assert run("create", "--help")[0] == 0
    assert "--allow-crash-consistent" in capsys.readouterr().out


def test_usage_error_exit_2(run):
    assert run("create")[0] == exception.EXIT_USAGE
    assert run("frobnicate")[0] == exception.EXIT_USAGE
    assert run("create", "x", "--require-quiesce", "--allow-crash-consistent")[0] == 2


def test_create_then_list_show_in_every_format(run, guest):
    rc, out, err = run("create", "--all-volumes", guest.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["members"]) == 4
    rc, out, _ = run("list", "-f", "json")
    assert [r["id"] for r in json.loads(out)] == [doc["id"]]
    rc, out, _ = run("list", "-f", "yaml", "--instance", guest.name)
    assert yaml.safe_load(out)[0]["members"] == 4
    rc, out, _ = run("list", "-f", "value")
    assert out.split()[0] == doc["id"]
    rc, out, _ = run("show", doc["id"][:8])
    assert "filesystem" in out and "member vda" in out
    rc, out, _ = run("show", doc["id"], "-f", "yaml")
    assert yaml.safe_load(out)["checksum"] == doc["checksum"]


@pytest.mark.parametrize("argv,code,text", [
    (["create", "no-such-vm"], exception.EXIT_NOT_FOUND, "no instance 'no-such-vm'"),
    (["create", "not-a-uuid-$(rm)"], exception.EXIT_NOT_FOUND, "no instance"),
    (["show", "deadbeef"], exception.EXIT_NOT_FOUND, "no snapshot sets match"),
    (["show", "dead"], exception.EXIT_NOT_FOUND, "8+ characters"),
    (["delete", "deadbeef-0000-0000-0000-000000000000"], exception.EXIT_NOT_FOUND, "no snapshot"),
])
def test_bad_input_gives_one_line_and_documented_code(run, argv, code, text):
    rc, out, err = run(*argv)
    assert rc == code
    assert err.count("\n") == 1 and text in err and "Traceback" not in err


def test_missing_config_file(run):
    rc, _, err = run("--config-file", "/nonexistent/cgsnap.conf", "list", config=False)
    assert rc == exception.EXIT_CONFIG and "config file not found" in err


def test_unparseable_config_file(run, tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[DEFAULT\nstate_dir = x\n")
    rc, _, err = run("--config-file", str(bad), "list", config=False)
    assert rc == exception.EXIT_CONFIG and err.count("\n") == 1


def test_odd_names_are_stored_safely(run, guest):
    rc, out, err = run("create", guest.name, "--name", "a\x1b[2J\tb; $(reboot) " + "é" * 1000,
                       "-f", "json")
    assert rc == 0, err
    name = json.loads(out)["name"]
    assert "\x1b" not in name and "\t" not in name and len(name) <= 128
    assert name.startswith("a[2J b; $(reboot) é")
    rc, _, err = run("create", guest.name, "--name", "\x00\x07")
    assert rc == exception.EXIT_REFUSED and "printable" in err


def test_failed_create_prints_one_line_and_reverts(run, guest):
    faults.arm("hypervisor.freeze.after")
    rc, _, err = run("create", "--all-volumes", guest.name)
    assert rc == exception.EXIT_SNAPSHOT_FAILED
    assert err == "cgsnap: error: injected fault at hypervisor.freeze.after\n"
    assert guest.frozen_count() == 0
    rc, out, _ = run("list", "-f", "json", "--status", "failed")
    assert len(json.loads(out)) == 1


def test_unexpected_bug_is_one_line_not_a_traceback(run, guest, monkeypatch):
    from cgsnap import api
    monkeypatch.setattr(api, "list_snapshot_sets", lambda *a: 1 / 0)
    rc, _, err = run("list")
    assert rc == exception.EXIT_ERROR
    assert err.count("\n") == 1 and "internal error: ZeroDivisionError" in err


def test_journal_logging_without_its_bindings_is_a_config_error(cli_run, tmp_path):
    conf = tmp_path / "cgsnap.conf"
    conf.write_text(conf.read_text().replace("[DEFAULT]\n", "[DEFAULT]\nuse_journal = true\n"))
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        rc, _out, err = cli_run("list")
        assert rc == 8 and "use_journal needs the systemd Python bindings" in err
        assert err.count("\n") == 1
    else:
        assert cli_run("list")[0] == 0
