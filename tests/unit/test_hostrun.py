"""``cgsnap create --all-instances`` on the test driver: eight running
instances, two of which fail (a member snapshot that goes to error after the
freeze, a volume in error refused before it); the summary, the exit code,
the per-instance prune, the metrics file, and the selection options."""

import io
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgsnap import api, drivers, exception, hostrun
from cgsnap.cli import main as cli
from cgsnap.drivers import fake, libvirt_driver

from .. import lab as testlab

LABELS = ("<metadata><cgsnap:labels xmlns:cgsnap='https://cgsnap.dev/xmlns/labels/1'>"
          "<cgsnap:label key='backup'>{}</cgsnap:label></cgsnap:labels></metadata>")


class Host:
    """``n`` running test-driver instances on one node, fake Cinder volumes."""

    def __init__(self, tmp_path, n=8):
        self.backend = fake.FakeVolumeBackend()
        self.ids, xmls = {}, []
        for i in range(n):
            name = f"web{i}" if i < n - 2 else f"db{i}"
            iid = testlab.new_instance_id()
            root = self.backend.add_volume(attached_to=[iid])
            data = [self.backend.add_volume(attached_to=[iid]) for _ in range(2)]
            xml = testlab.domain_xml(name, iid, root, data)
            label = "nightly" if i % 2 == 0 else "weekly"
            xmls.append(xml.replace("    <devices>", "    " + LABELS.format(label)
                                    + "\n    <devices>"))
            self.ids[name] = {"id": iid, "root": root, "data": data, "label": label}
        self.uri = testlab.write_node(str(tmp_path / "node.xml"), xmls)
        self.hypervisor = libvirt_driver.LibvirtHypervisor(self.uri)
        drivers.override(drivers.DriverSet(self.hypervisor, self.backend,
                                           fake.FakeImageBackend()))
        self.conf = tmp_path / "cgsnap.conf"
        self.metrics = tmp_path / "metrics"
        self.metrics.mkdir()
        self.conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
                             f"[libvirt]\nuri = {self.uri}\n"
                             f"[metrics]\ntextfile_dir = {self.metrics}\n")

    def cli(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        rc = cli.run(["--config-file", str(self.conf), *argv], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_running_instances_carry_their_domain_labels(host):
    got = {i["name"]: i for i in host.hypervisor.running_instances()}
    assert set(got) == set(host.ids)
    assert got["web0"]["labels"] == {"backup": "nightly"}
    assert got["web1"]["id"] == host.ids["web1"]["id"]


def test_eight_instances_two_failures_summary_exit_code_and_metrics(host):
    host.backend.fail_volume_ids.add(host.ids["web3"]["data"][1])      # fails in the window
    host.backend.volumes[host.ids["db7"]["data"][0]]["status"] = "error"  # refused before
    rc, out, err = host.cli("create", "--all-instances", "--all-volumes", "--concurrency", "3",
                            "-f", "json")
    assert rc == exception.EXIT_PARTIAL == 11
    summary = json.loads(out)
    assert (summary["succeeded"], summary["failed"]) == (6, 2)
    rows = {r["instance"]: r for r in summary["instances"]}
    assert set(rows) == set(host.ids)
    assert rows["web3"]["exit_code"] == exception.EXIT_SNAPSHOT_FAILED
    assert rows["db7"]["exit_code"] == exception.EXIT_REFUSED
    for name, r in rows.items():
        if name not in ("web3", "db7"):
            assert r["result"] == "ok" and r["consistency"] == "filesystem", r
            assert api.show_snapshot_set(r["set_id"])["status"] == "available"
    # each failure on its own stderr line, naming the instance
    lines = err.strip().splitlines()
    assert sorted(line.split()[2] for line in lines) == ["db7", "web3"]
    assert all(line.startswith("cgsnap: error: ") for line in lines)
    # nothing left of the failed ones; no guest frozen
    assert not [s for s in host.backend.snapshots.values()
                if s["volume_id"] in host.ids["web3"]["data"] + [host.ids["web3"]["root"]]]
    for name in host.ids:
        assert libvirt_driver.connection(host.uri).lookupByName(name).fsThaw() == 0
    # the metrics file: parsed with Prometheus' own parser, it agrees
    text = (host.metrics / "cgsnap.prom").read_text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    last_ok = {s.labels["instance"] for s in fams["cgsnap_last_success_timestamp_seconds"].samples}
    assert last_ok == set(host.ids) - {"web3", "db7"}
    by_status = {s.labels["status"]: s.value for s in fams["cgsnap_sets"].samples}
    assert by_status["available"] == 6 and by_status["failed"] == 2


def test_prune_runs_after_each_success_and_never_after_a_failure(host):
    for _ in range(3):
        assert host.cli("create", "--all-instances", "--match", "web*")[0] == 0
    host.backend.fail_volume_ids.add(host.ids["web2"]["root"])
    rc, out, _err = host.cli("create", "--all-instances", "--match", "web*",
                             "--prune", "keep-last=2", "-f", "json")
    assert rc == 11
    rows = {r["instance"]: r for r in json.loads(out)["instances"]}
    assert rows["web2"]["result"] == "failed" and rows["web2"]["pruned"] is None
    web2 = api.list_snapshot_sets(host.ids["web2"]["id"], "available")
    assert len(web2) == 3  # its good sets are untouched
    for name in ("web0", "web1", "web3", "web4", "web5"):
        assert rows[name]["pruned"] == 2, rows[name]
        assert len(api.list_snapshot_sets(host.ids[name]["id"], "available")) == 2


def test_selection_by_glob_exclusion_and_domain_label(host):
    rc, out, _ = host.cli("create", "--all-instances", "--match", "web*", "--exclude", "web1",
                          "--domain-label", "backup=nightly", "-f", "json")
    assert rc == 0
    assert sorted(r["instance"] for r in json.loads(out)["instances"]) == ["web0", "web2", "web4"]


def test_nothing_matching_is_an_error_not_a_success(host):
    rc, out, err = host.cli("create", "--all-instances", "--match", "nope*")
    assert rc == exception.EXIT_NOT_FOUND
    assert "no running instance matches" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["create"], "give INSTANCE, or --all-instances"),
    (["create", "web0", "--all-instances"], "not both"),
    (["create", "web0", "--prune", "keep-daily=7"], "--prune needs --all-instances"),
    (["create", "--all-instances", "--prune", "keep-daily=x"], "keep-daily takes a whole"),
    (["create", "--all-instances", "--prune", "min-keep=3"], "needs at least one keep rule"),
    (["create", "--all-instances", "--prune", "daily=3"], "give RULE=N"),
    (["create", "--all-instances", "--concurrency", "0"], "1 or more"),
    (["create", "--all-instances", "--idempotency-key", "k"], "cannot go with --all-instances"),
])
def test_bad_host_wide_options_are_usage_errors(host, capsys, argv, message):
    rc, _out, _err = host.cli(*argv)
    assert rc == exception.EXIT_USAGE
    err = capsys.readouterr().err  # argparse writes to sys.stderr
    assert message in err and "Traceback" not in err


def test_prune_policy_parsing():
    assert hostrun.parse_prune_policy("keep-daily=7, keep-weekly=4,min-keep=2") == \
        {"keep_daily": 7, "keep_weekly": 4, "min_keep": 2}
    assert hostrun.parse_prune_policy("keep-within=36h", cli._duration) == \
        {"keep_within": 36 * 3600}


def test_wait_lock_waits_for_a_busy_instance_instead_of_exiting_7(host):
    import threading
    import time

    from cgsnap import lock
    iid = host.ids["web0"]["id"]
    assert host.cli("list")[0] == 0  # the state directory exists
    held = threading.Event()

    def hold():
        with lock.instance_lock(iid, "test"):
            held.set()
            time.sleep(1.0)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    rc, _out, err = host.cli("create", "web0")
    assert rc == exception.EXIT_LOCKED, err
    t.join()
    t = threading.Thread(target=hold)
    t.start()
    held.clear()
    held.wait(5)
    rc, out, err = host.cli("create", "web0", "--wait-lock", "20", "-f", "json")
    t.join()
    assert rc == 0, err
    assert json.loads(out)["status"] == "available"
