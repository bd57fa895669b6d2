"""Two hosts, one instance: after a live migration the instance's sets of
host A's catalog must survive `cgsnap gc` on host B (defect 2), on the real
dev cloud.  A "live migration" on the test driver is the same domain UUID seen
by a second catalog (a second state directory)."""

import json
import shutil


def _host_b(inst, tmp_path):
    conf = tmp_path / "cgsnap-b.conf"
    conf.write_text(inst.conf.read_text().replace(f"{tmp_path}/state", f"{tmp_path}/state-b"))
    return conf


def test_gc_on_host_b_keeps_host_a_s_available_set(make_instance, tmp_path):
    inst = make_instance(n_data=2, name="catalog-own")
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    a_set = json.loads(out)["id"]
    conf_a = tmp_path / "cgsnap-a.conf"
    shutil.copy(inst.conf, conf_a)
    inst.conf = _host_b(inst, tmp_path)  # from now on the CLI runs as host B
    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    b_set = json.loads(out)["id"]
    rc, out, err = inst.cgsnap("gc", "--grace-period", "0", "--no-images", "-f", "json")
    assert rc == 0, err
    assert [r for r in json.loads(out) if r["set_id"] == a_set] == []
    assert sorted(s.status for s in inst.cinder_snapshots(a_set)) == ["available"] * 3
    assert len(inst.cinder_snapshots(b_set)) == 3
    # --any-catalog is the explicit override: it would collect A's set
    rc, out, err = inst.cgsnap("gc", "--grace-period", "0", "--no-images", "--dry-run",
                               "--any-catalog", "-f", "json")
    assert rc == 0, err
    would = {r["set_id"] for r in json.loads(out) if r["action"] == "would-delete"}
    assert a_set in would and b_set not in would  # (the shared cloud may hold others' orphans)
    for conf, set_id in ((conf_a, a_set), (inst.conf, b_set)):
        inst.conf = conf
        rc, _, err = inst.cgsnap("delete", set_id)
        assert rc == 0, err
