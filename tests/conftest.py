"""Shared fixtures: a fresh config and state directory per test."""

import pytest

from cgsnap import drivers, faults
from cgsnap.conf import CONF


@pytest.fixture(scope="session")
def flow_store(tmp_path_factory):
    """One TaskFlow logbook database for the session: migrating a fresh one
    costs about a second, which every test would otherwise pay."""
    return f"sqlite:///{tmp_path_factory.mktemp('flows')}/flows.db"


@pytest.fixture(autouse=True)
def clean_conf(tmp_path, monkeypatch, flow_store):
    """Each test gets its own state dir, no config files, no armed faults
    (CGSNAP_FAULT only matters to a tests.faultcli subprocess; the product
    never reads it)."""
    monkeypatch.delenv("CGSNAP_FAULT", raising=False)
    monkeypatch.delenv("CGSNAP_CONFIG", raising=False)
    CONF([], project="cgsnap", default_config_files=[])
    CONF.set_override("state_dir", str(tmp_path / "state"))
    CONF.set_override("persistence_connection", flow_store)
    faults.reset()
    yield
    faults.reset()
    drivers.override(None)
    CONF.clear_override("state_dir")
    CONF.clear_override("persistence_connection")
    CONF.reset()
