"""The Prometheus textfile ([metrics] textfile_dir): written after every create
(failed ones too), prune and verify, parsed back with Prometheus's own text
parser."""

import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgsnap import exception, faults, manifest


@pytest.fixture
def run(cli_run, tmp_path):
    with open(tmp_path / "cgsnap.conf", "a") as f:
        f.write(f"[metrics]\ntextfile_dir = {tmp_path}/textfile\n")
    return cli_run


def _metrics(tmp_path):
    with open(tmp_path / "textfile" / "cgsnap.prom") as f:
        text = f.read()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_create_prune_and_verify_leave_metrics_node_exporter_can_read(run, guest, tmp_path):
    rc, out, err = run("create", "--all-volumes", guest.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    m = _metrics(tmp_path)
    inst = (("instance", guest.name), ("instance_id", guest.id))
    assert m[("cgsnap_last_success_timestamp_seconds", inst)] == pytest.approx(
        manifest.utcnow().timestamp(), abs=60)
    assert m[("cgsnap_last_freeze_window_seconds", inst)] == doc["freeze"]["window_s"]
    assert m[("cgsnap_sets", (("status", "available"),))] == 1
    assert m[("cgsnap_freeze_window_seconds_count", ())] == 1

    faults.arm("volume.create_snapshot", "raise@1")
    rc, _, _ = run("create", "--all-volumes", guest.name)
    faults.reset()
    assert rc == exception.EXIT_SNAPSHOT_FAILED
    m = _metrics(tmp_path)  # a failed create rewrites the file too
    assert m[("cgsnap_sets", (("status", "failed"),))] == 1
    assert m[("cgsnap_last_success_timestamp_seconds", inst)] == pytest.approx(
        manifest.utcnow().timestamp(), abs=60)

    rc, _, err = run("prune", "--keep-last", "1")
    assert rc == 0, err
    m = _metrics(tmp_path)
    assert m[("cgsnap_prune_deleted_sets", ())] == 1  # the failed set
    assert m[("cgsnap_prune_failed_sets", ())] == 0
    assert m[("cgsnap_sets", (("status", "failed"),))] == 0

    guest.backend.snapshots.pop(doc["members"][0]["snapshot_id"])
    assert run("verify", "--all")[0] == exception.EXIT_INTEGRITY
    m = _metrics(tmp_path)
    assert m[("cgsnap_verify_broken_sets", ())] == 1
    assert ("cgsnap_prune_deleted_sets", ()) in m  # the last prune is still shown
    assert oct(os.stat(tmp_path / "textfile" / "cgsnap.prom").st_mode & 0o777) == "0o644"


def test_an_unwritable_textfile_dir_is_a_warning_not_a_failure(run, guest, tmp_path):
    (tmp_path / "textfile").write_text("not a directory")
    rc, _, err = run("create", "--all-volumes", guest.name)
    assert rc == 0
    assert "could not write the metrics textfile" in err
