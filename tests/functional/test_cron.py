"""The cron job's commands on the real dev cloud (issue 14): a host-wide run
of 8 instances with 2 failures (a Cinder volume in error, refused before the
freeze; a guest agent that cannot freeze), its summary, exit code and
metrics file; verify finding a real snapshot deleted behind cgsnap's back;
prune deleting real snapshots and keeping the newest good set."""

import io
import json
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgsnap import exception
from cgsnap.cli import main as cli
from cgsnap.drivers import libvirt_driver

from .. import lab as testlab
from .conftest import CLOUD, CLOUDS


class Host:
    """``n`` test-driver domains on one node, each with a root and a data
    volume that are real, attached Cinder volumes."""

    def __init__(self, lab, tmp_path, n):
        self.lab, self.instances, xmls = lab, {}, []
        for i in range(n):
            name, iid = f"cron-{i}", str(uuid.uuid4())
            vids = lab.create_attached_volumes(iid, 2, 1, f"{name}-vol")
            self.instances[name] = {"id": iid, "volumes": vids}
            xmls.append(testlab.domain_xml(name, iid, vids[0], vids[1:]))
        self.uri = testlab.write_node(str(tmp_path / "node.xml"), xmls)
        self.metrics = tmp_path / "metrics"
        self.metrics.mkdir()
        self.conf = tmp_path / "cgsnap.conf"
        self.conf.write_text(
            f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
            f"[libvirt]\nuri = {self.uri}\nfreeze_timeout = 30\n"
            f"[openstack]\ncloud = {CLOUD}\nclouds_yaml = {CLOUDS}\n"
            f"[metrics]\ntextfile_dir = {self.metrics}\n")

    def cgsnap(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        rc = cli.run(["--config-file", str(self.conf), *argv], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    def snapshots(self, name):
        vids = set(self.instances[name]["volumes"])
        return [s for s in self.lab.admin.volume_snapshots.list(search_opts={"all_tenants": 1})
                if s.volume_id in vids]

    def all_volumes(self):
        return [v for i in self.instances.values() for v in i["volumes"]]


@pytest.fixture
def host(lab, tmp_path):
    made = []

    def _make(n):
        made.append(Host(lab, tmp_path, n))
        return made[-1]
    yield _make
    for h in made:
        lab.delete_volumes(h.all_volumes())


def test_host_wide_run_of_8_instances_with_2_failures(host, monkeypatch):
    h = host(8)
    h.lab.reset_status(h.instances["cron-2"]["volumes"][1], "error")
    agentless = h.instances["cron-5"]["id"]
    real_freeze = libvirt_driver.LibvirtHypervisor.freeze

    def freeze(self, instance_id):
        if instance_id == agentless:
            raise exception.QuiesceFailed("guest agent of cron-5 does not answer: injected")
        return real_freeze(self, instance_id)
    monkeypatch.setattr(libvirt_driver.LibvirtHypervisor, "freeze", freeze)

    rc, out, err = h.cgsnap("create", "--all-instances", "--all-volumes", "--concurrency", "3",
                            "--label", "policy=nightly", "-f", "json")
    assert rc == exception.EXIT_PARTIAL, err
    summary = json.loads(out)
    assert (summary["succeeded"], summary["failed"]) == (6, 2)
    rows = {r["instance"]: r for r in summary["instances"]}
    assert rows["cron-2"]["exit_code"] == exception.EXIT_REFUSED
    assert rows["cron-5"]["exit_code"] == exception.EXIT_QUIESCE
    assert sorted(line.split()[2] for line in err.strip().splitlines()) == ["cron-2", "cron-5"]
    for name, r in rows.items():
        if name in ("cron-2", "cron-5"):
            assert h.snapshots(name) == [], f"{name} left snapshots in Cinder"
        else:
            assert r["result"] == "ok" and r["consistency"] == "filesystem"
            snaps = h.snapshots(name)
            assert len(snaps) == 2 and {s.status for s in snaps} == {"available"}
            assert {s.metadata["cgsnap_set_id"] for s in snaps} == {r["set_id"]}
            assert {s.metadata.get("cgsnap_label_policy") for s in snaps} == {"nightly"}
    fams = {f.name: f for f in text_string_to_metric_families(
        (h.metrics / "cgsnap.prom").read_text())}
    good = {s.labels["instance"] for s in fams["cgsnap_last_success_timestamp_seconds"].samples}
    assert good == set(rows) - {"cron-2", "cron-5"}
    status = {s.labels["status"]: s.value for s in fams["cgsnap_sets"].samples}
    assert status["available"] == 6 and status["failed"] == 2


def test_verify_and_prune_on_real_snapshots(host):
    h = host(1)
    ids = []
    for _ in range(3):
        rc, out, err = h.cgsnap("create", "--all-volumes", "cron-0", "-f", "json")
        assert rc == 0, err
        ids.append(json.loads(out)["id"])
    assert h.cgsnap("verify", "--all")[0] == 0
    # an operator deletes one member of the middle set behind cgsnap's back
    victim = next(s for s in h.snapshots("cron-0") if s.metadata["cgsnap_set_id"] == ids[1])
    h.lab.admin.volume_snapshots.delete(victim.id)
    from cgsnap import wait
    wait.poll(lambda: [s for s in h.snapshots("cron-0") if s.id == victim.id],
              lambda left: not left, 60, 0.1, 1, what="snapshot delete")
    rc, out, err = h.cgsnap("verify", "--all", "-f", "json")
    assert rc == exception.EXIT_INTEGRITY
    rows = {r["id"]: r for r in json.loads(out)}
    assert [rows[i]["result"] for i in ids] == ["ok", "broken", "ok"]
    assert rows[ids[1]]["problems"] == [f"vdb: Cinder snapshot {victim.id} is gone"]
    # keep-last 1 on real Cinder: the newest stays, the others' snapshots go
    rc, out, err = h.cgsnap("prune", "--instance", "cron-0", "--keep-last", "1", "-f", "json")
    assert rc == 0, err
    result = {r["id"]: r["result"] for r in json.loads(out)}
    assert result == {ids[2]: "kept", ids[1]: "deleted", ids[0]: "deleted"}
    left = h.snapshots("cron-0")
    assert {s.metadata["cgsnap_set_id"] for s in left} == {ids[2]} and len(left) == 2
