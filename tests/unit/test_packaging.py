"""cgsnap installs like an operator's tool: the wheel builds without build
isolation on the venv's own setuptools, with one version, the license, the
entry points and the data files; the man page is generated from the parser
and renders; no tool or oversized file is committed."""

import email
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import cgsnap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(out), ROOT],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("cgsnap-*.whl")
    return zipfile.ZipFile(path)


def _dist_file(whl, name):
    (path,) = [n for n in whl.namelist() if n.endswith(f".dist-info/{name}")]
    return whl.read(path).decode()


def test_the_wheel_has_one_version_the_license_and_the_entry_points(wheel):
    meta = email.message_from_string(_dist_file(wheel, "METADATA"))
    assert meta["Name"] == "cgsnap" and meta["Version"] == cgsnap.__version__
    assert meta["License"] == "Apache-2.0"
    assert "Apache License" in _dist_file(wheel, "LICENSE")
    eps = _dist_file(wheel, "entry_points.txt")
    assert "cgsnap = cgsnap.cli.main:main" in eps
    assert "cgsnap = cgsnap.conf:list_opts" in eps
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("taskflow") for r in requires)


def test_the_wheel_carries_the_schemas_and_every_migration(wheel):
    names = set(wheel.namelist())
    for schema in os.listdir(os.path.join(ROOT, "cgsnap", "schemas")):
        assert f"cgsnap/schemas/{schema}" in names
    versions = os.path.join(ROOT, "cgsnap", "db", "migrations", "versions")
    for mig in os.listdir(versions):
        if mig.endswith(".py"):
            assert f"cgsnap/db/migrations/versions/{mig}" in names
    assert "cgsnap/db/migrations/script.py.mako" in names
    assert not [n for n in names if n.startswith("tests/")]


def test_the_man_page_is_generated_from_the_parser_and_renders():
    from tools import manpage
    with open(os.path.join(ROOT, "doc", "man", "cgsnap.1")) as f:
        committed = f.read()
    assert committed == manpage.render(), "doc/man/cgsnap.1 is stale: run `make man`"
    man = shutil.which("man")
    assert man, "man(1) is missing (Debian package man-db)"
    proc = subprocess.run([man, "--warnings", "-l", os.path.join(ROOT, "doc", "man", "cgsnap.1")],
                          capture_output=True, text=True, env=dict(os.environ, MANWIDTH="100",
                                                                   MANPAGER="cat", PAGER="cat"))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    from cgsnap.cli import main as cli
    for command in cli._parser().commands:
        assert f"cgsnap {command}" in proc.stdout
    assert "--all-instances" in proc.stdout and "EXIT STATUS" in proc.stdout


def test_no_tool_or_large_file_is_committed():
    files = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert not [f for f in files if f.endswith((".whl", ".tar.gz", ".egg"))]
    big = [f for f in files if os.path.isfile(os.path.join(ROOT, f))
           and os.path.getsize(os.path.join(ROOT, f)) > 1 << 20]
    assert big == []


def test_tox_has_an_environment_for_every_tier_of_make_test():
    import re
    with open(os.path.join(ROOT, "Makefile")) as f:
        make = f.read()
    tiers = re.search(r"^TEST_TIERS := ((?:.*\\\n)*.*)$", make, re.M).group(1)
    tiers = tiers.replace("\\\n", " ").split()
    tox = os.path.join(os.path.dirname(sys.executable), "tox")
    proc = subprocess.run([tox, "-l"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == tiers
