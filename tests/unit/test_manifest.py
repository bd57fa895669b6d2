import json
import os

import pytest

from cgsnap import catalog, exception, manifest

INSTANCE = {"id": "6695eb01-f6a4-8304-79aa-97f2502e193f", "name": "web1"}
SET_ID = "0c1f9a2e-1111-2222-3333-444455556666"
MEMBER = {"role": "root", "device": "vda", "kind": "cinder-snapshot", "volume_id": "v1",
          "source_path": None, "snapshot_id": None, "image_id": None,
          "name": "cgsnap-6695eb01-0c1f9a2e-root-vda", "status": "planned", "size_gb": None}


def _doc():
    return manifest.new(SET_ID, "nightly", INSTANCE, [MEMBER], {"all_volumes": True})


def test_seal_then_verify():
    sealed = manifest.seal(_doc())
    assert sealed["checksum"].startswith("sha256:")
    assert manifest.verify(sealed) is sealed


def test_tampering_is_detected():
    sealed = manifest.seal(_doc())
    sealed["members"][0]["volume_id"] = "v2"
    with pytest.raises(exception.IntegrityError, match="checksum mismatch"):
        manifest.verify(sealed)


def test_schema_rejects_bad_documents():
    doc = _doc()
    doc["status"] = "weird"
    with pytest.raises(exception.IntegrityError, match="status"):
        manifest.seal(doc)
    doc = _doc()
    doc["members"][0]["role"] = "swap"
    with pytest.raises(exception.IntegrityError):
        manifest.seal(doc)


def test_canonical_json_ignores_key_order_and_checksum():
    a = manifest.seal(_doc())
    b = json.loads(json.dumps(a, sort_keys=False))
    b = dict(reversed(list(b.items())))
    b["checksum"] = "whatever"
    assert manifest.compute_checksum(a) == manifest.compute_checksum(b)


def test_schema_is_shipped_and_versioned():
    for version in manifest.READABLE_VERSIONS:
        s = manifest.schema(version)
        assert s["properties"]["schema_version"]["const"] == version
        assert set(s["required"]) >= {"id", "name", "instance_id", "status", "created_at",
                                      "consistency", "freeze", "members", "checksum"}
    assert manifest.SCHEMA_VERSION == max(manifest.READABLE_VERSIONS)


V1_DOC = os.path.join(os.path.dirname(__file__), "data", "manifest-v1.json")


def test_a_stored_v1_manifest_stays_readable(tmp_path):
    """tests/unit/data/manifest-v1.json was written and sealed by cgsnap before
    schema v2; it verifies, and the catalog stores and reads it as v1."""
    with open(V1_DOC) as f:
        doc = json.load(f)
    assert doc["schema_version"] == 1 and "labels" not in doc
    assert manifest.verify(doc) is doc
    cat = catalog.Catalog(f"sqlite:///{tmp_path}/c.db")
    cat.create(doc)  # (the catalog seals what it stores: a new updated_at and checksum)
    stored = cat.get(doc["id"])
    assert stored["schema_version"] == 1 and "labels" not in stored
    assert {k: v for k, v in stored.items() if k not in ("updated_at", "checksum")} == \
        {k: v for k, v in doc.items() if k not in ("updated_at", "checksum")}
    assert [d["id"] for d in cat.list()] == [doc["id"]]


def test_v2_adds_labels_and_protected_and_v1_does_not_take_them():
    doc = manifest.seal(manifest.new(SET_ID, "nightly", INSTANCE, [], {}, labels={"tier": "db"}))
    assert doc["schema_version"] == 2
    assert (doc["labels"], doc["protected"]) == ({"tier": "db"}, False)
    with open(V1_DOC) as f:
        v1 = json.load(f)
    v1["labels"] = {"tier": "db"}
    with pytest.raises(exception.IntegrityError, match="labels"):
        manifest.validate(v1)
    with pytest.raises(exception.IntegrityError):
        manifest.seal(dict(doc, labels={"bad key!": "x"}))


def test_catalog_round_trip_and_integrity(tmp_path):
    cat = catalog.Catalog(f"sqlite:///{tmp_path}/c.db")
    cat.create(_doc())
    assert cat.get(SET_ID)["name"] == "nightly"
    assert cat.find(SET_ID[:8])["id"] == SET_ID
    cat.update(SET_ID, status="available", consistency="filesystem")
    assert [d["status"] for d in cat.list(instance_id=INSTANCE["id"])] == ["available"]
    # Corrupt the stored body behind the catalog's back: reads must refuse it.
    with cat.engine.begin() as conn:
        conn.execute(catalog.manifests.update().values(
            body=json.dumps({**cat.get(SET_ID), "name": "evil"})))
    with pytest.raises(exception.IntegrityError):
        cat.get(SET_ID)
    cat.delete(SET_ID)
    with pytest.raises(exception.SnapshotSetNotFound):
        cat.get(SET_ID)


def test_catalog_prefix_must_be_unique_and_long_enough(tmp_path):
    cat = catalog.Catalog(f"sqlite:///{tmp_path}/c.db")
    with pytest.raises(exception.SnapshotSetNotFound, match="8"):
        cat.find("0c1f")
    with pytest.raises(exception.SnapshotSetNotFound, match="no snapshot sets"):
        cat.find("0c1f9a2e")
