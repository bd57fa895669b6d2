"""Issue 11, finding 5, on the production shape only: its region
``RegionNoImage`` (cloud ``devcloud-prod-noimage``) has Cinder in the service
catalog and no image service, as some clouds do.  The default shape has no
such region, so `make functional` leaves this directory to
`make functional-production`.

Before the fix, ``cgsnap gc --dry-run`` on that cloud exited 8 (``public
endpoint for image service ... not found``) unless ``--no-images`` was given.
"""

import json
import os

from cgsnap import exception

from ..conftest import CLOUD

NOIMAGE_CLOUD = os.environ.get("CGSNAP_TEST_NOIMAGE_CLOUD", f"{CLOUD}-noimage")


def _on_the_cloud_without_glance(inst):
    text = inst.conf.read_text()
    assert f"cloud = {CLOUD}\n" in text
    inst.conf.write_text(text.replace(f"cloud = {CLOUD}\n", f"cloud = {NOIMAGE_CLOUD}\n"))


def test_a_cloud_without_an_image_service_takes_volume_sets_and_gc_skips_glance_once(
        make_instance):
    inst = make_instance(n_data=2, name="prod-noimage")
    _on_the_cloud_without_glance(inst)

    rc, out, err = inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "available" and len(doc["members"]) == 3

    for dry_run in (["--dry-run"], []):
        rc, out, err = inst.cgsnap("gc", *dry_run, "--grace-period", "0", "-f", "json")
        assert rc == exception.EXIT_OK, err
        assert err.count("skipped Glance") == 1 and "no image service" in err, err
        assert [r for r in json.loads(out) if r["action"] != "kept"] == []

    rc, _, err = inst.cgsnap("delete", doc["id"])
    assert rc == 0, err
    assert inst.cinder_snapshots(doc["id"]) == []

