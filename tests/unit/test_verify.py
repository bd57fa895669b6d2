"""`cgsnap verify`: drift is found and reported per set (test driver + fake
storage; the real local copies and memory images of a real guest are in
tests/e2e/test_local_files.py)."""

import json

import pytest

from cgsnap import api, exception, manifest


@pytest.fixture
def run(cli_run):
    return cli_run


def _create(run, guest):
    rc, out, err = run("create", "--all-volumes", guest.name, "-f", "json")
    assert rc == 0, err
    return json.loads(out)


def _rows(out):
    return {r["id"]: r for r in json.loads(out)}


def test_verify_passes_on_sets_as_made(run, guest):
    ids = [_create(run, guest)["id"] for _ in range(2)]
    rc, out, err = run("verify", "--all", "-f", "json")
    assert rc == 0, err
    assert [(r["result"], r["problems"]) for r in _rows(out).values()] == [("ok", [])] * 2
    assert set(_rows(out)) == set(ids)


def test_a_member_deleted_behind_cgsnaps_back_is_drift(run, guest):
    good, drifted = _create(run, guest), _create(run, guest)
    victim = drifted["members"][2]
    guest.backend.snapshots.pop(victim["snapshot_id"])
    other = drifted["members"][1]
    guest.backend.snapshots[other["snapshot_id"]]["status"] = "error"
    rc, out, err = run("verify", "--all", "-f", "json")
    assert rc == exception.EXIT_INTEGRITY
    rows = _rows(out)
    assert rows[good["id"]]["result"] == "ok"
    assert rows[drifted["id"]]["result"] == "broken"
    assert rows[drifted["id"]]["problems"] == [
        f"{other['device']}: Cinder snapshot {other['snapshot_id']} is error",
        f"{victim['device']}: Cinder snapshot {victim['snapshot_id']} is gone"]
    assert err.count("\n") == 1 and drifted["id"] in err and good["id"] not in err


def test_a_corrupt_local_copy_and_memory_image_are_drift(run, guest, tmp_path):
    """A set with a local copy and a memory image, as a real host records them."""
    doc = _create(run, guest)
    copy, image = tmp_path / "vdb.qcow2", tmp_path / "memory.img"
    copy.write_bytes(b"q" * 4096)
    image.write_bytes(b"m" * 8192)
    cat = api.catalog()
    doc = cat.get(doc["id"])
    doc["members"].append({"role": "volume", "device": "vdz", "kind": "local-qcow2",
                           "name": "cgsnap-x-vol-vdz", "status": "available", "size_gb": 1,
                           "path": str(copy), "size_bytes": 4096,
                           "sha256": manifest.sha256_file(str(copy))})
    doc["memory"] = {"path": str(image), "size_bytes": 8192,
                     "sha256": manifest.sha256_file(str(image))}
    cat.save(doc)
    assert run("verify", doc["id"])[0] == 0
    with open(copy, "r+b") as f:  # same size, one byte flipped
        f.write(b"Q")
    image.write_bytes(b"m" * 100)
    rc, out, err = run("verify", doc["id"][:8], "-f", "json")
    assert rc == exception.EXIT_INTEGRITY
    assert _rows(out)[doc["id"]]["problems"] == [
        f"vdz: local copy {copy}: sha256 differs from the one recorded",
        f"memory image {image} has 100 bytes, 8192 were recorded"]
    copy.unlink()
    rc, out, _ = run("verify", doc["id"], "-f", "json")
    assert f"vdz: local copy {copy} is gone" in _rows(out)[doc["id"]]["problems"]


def test_a_corrupt_manifest_is_broken_and_other_statuses_are_not_checked(run, guest):
    from cgsnap import catalog, faults
    good = _create(run, guest)
    faults.arm("volume.create_snapshot", "raise@1")
    assert run("create", "--all-volumes", guest.name)[0] == exception.EXIT_SNAPSHOT_FAILED
    faults.reset()
    cat = api.catalog()
    with cat.engine.begin() as conn:
        conn.execute(catalog.manifests.update().where(catalog.manifests.c.id == good["id"])
                     .values(body=json.dumps({**cat.get(good["id"]), "name": "evil"})))
    rc, out, err = run("verify", "--all", "-f", "json")
    assert rc == exception.EXIT_INTEGRITY
    rows = list(_rows(out).values())
    assert sorted(r["result"] for r in rows) == ["broken", "not checked"]
    [broken] = [r for r in rows if r["result"] == "broken"]
    assert broken["id"] == good["id"] and "checksum mismatch" in broken["problems"][0]


def test_verify_needs_sets_or_all(run, guest):
    rc, _, err = run("verify")
    assert rc == exception.EXIT_USAGE and "give set ids or --all" in err
