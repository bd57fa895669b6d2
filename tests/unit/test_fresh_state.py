"""Several cgsnap runs starting at once on a fresh state directory (cron on a
new host, or a fleet of sets in one process) all open the catalog and the
flow store: the schema is created once, not raced."""

import concurrent.futures
import os
import subprocess
import sys
import threading

from cgsnap import catalog, runner
from cgsnap.conf import CONF


def test_threads_opening_a_fresh_flow_store_and_catalog_at_once(tmp_path):
    CONF.set_override("persistence_connection", f"sqlite:///{tmp_path}/flows.db")
    CONF.set_override("catalog_connection", f"sqlite:///{tmp_path}/catalog.db")
    start = threading.Barrier(8)

    def open_both(_):
        start.wait()
        runner.persistence_backend()
        return catalog.Catalog(CONF.catalog_connection).list()

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(open_both, range(8))) == [[]] * 8
    finally:
        CONF.clear_override("persistence_connection")
        CONF.clear_override("catalog_connection")


OPEN = """
import sys, time
from cgsnap import catalog, runner, state
from cgsnap.conf import CONF
CONF([], project="cgsnap", default_config_files=[])
CONF.set_override("state_dir", sys.argv[1])
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
runner.persistence_backend()
catalog.Catalog(state.catalog_url()).list()
"""


def test_processes_opening_a_fresh_state_dir_at_once(tmp_path):
    import time
    go = time.time() + 3.0  # every process imports first, then all open together
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(tmp_path / "state"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, CGSNAP_CONFIG="/dev/null"))
             for _ in range(6)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0] * 6, [err[-400:] for _, err in results]
