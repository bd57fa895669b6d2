"""Shared fixtures: a fresh config and state directory per test."""

import pytest

from cgsnap import drivers, faults
from cgsnap.conf import CONF


@pytest.fixture(autouse=True)
def clean_conf(tmp_path, monkeypatch):
    """Each test gets its own state dir, no config files, no armed faults."""
    monkeypatch.delenv("CGSNAP_FAULT", raising=False)
    monkeypatch.delenv("CGSNAP_CONFIG", raising=False)
    CONF([], project="cgsnap", default_config_files=[])
    CONF.set_override("state_dir", str(tmp_path / "state"))
    faults.reset()
    yield
    faults.reset()
    drivers.override(None)
    CONF.clear_override("state_dir")
    CONF.reset()
