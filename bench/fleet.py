#!/usr/bin/env python3
"""Fleet throughput: many instances snapshotted through cgsnap, against the
raw throughput of the same Cinder measured by the same script.

Each phase snapshots every instance once with ``--concurrency`` worker threads
in this process, then deletes what it made (outside the timing):

  raw                 bare client loop: per instance, its creates one after
                      another, then one list call per interval (0.05 s doubling
                      to 1 s, like cgsnap) until all are available
  cgsnap              cgsnap.api.create_snapshot_set per instance (real flow,
                      real persistence, instance lock, pre-checks, freeze/thaw on
                      libvirt's test driver); the volumes are in no group, so
                      cgsnap cuts them one by one, like raw

Phases alternate over ``--reps`` (order rotated) so drift hits each alike.
Throughput = member snapshots available / phase wall time.  The result,
``fraction_of_raw``, is the median over reps of cgsnap's throughput divided by
raw's in the same rep (the two phases run back to back, so slow drift of this
shared 2-vCPU machine cancels); ``fraction_of_raw_of_medians`` divides the
medians instead.  Cinder's soft-deleted rows are purged before every phase.

  python bench/fleet.py --instances 50 --volumes-per 4 --concurrency 8 --reps 1 --json
"""

import argparse
import concurrent.futures
import contextlib
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from cgsnap import api, drivers, naming, wait  # noqa: E402
from cgsnap.drivers import libvirt_driver  # noqa: E402
from cgsnap.tasks import volume as volume_tasks  # noqa: E402
from tests import lab as testlab  # noqa: E402


def raw_one(backend, inst):
    set_id = naming.new_set_id()
    meta = {naming.META_SET_ID: set_id}
    for i, vid in enumerate(inst["volume_ids"]):
        backend.create_snapshot(vid, f"fleet-raw-{set_id[:8]}-{i}", meta)
    n = len(inst["volume_ids"])
    snaps = wait.poll(lambda: backend.list_snapshots(set_id),
                      lambda ss: len(ss) >= n and all(s["status"] != "creating" for s in ss),
                      300, 0.05, 1.0)
    if any(s["status"] != "available" for s in snaps):
        raise RuntimeError(f"raw set {set_id}: a snapshot failed")
    return set_id, n


def cgsnap_one(backend, inst):
    doc = api.create_snapshot_set(inst["instance_id"], all_volumes=True)
    return doc["id"], len(doc["members"])


def run_phase(name, backend, insts, concurrency, probe=None):
    """Snapshot every instance once; ``probe`` (a context manager factory
    yielding a dict) measures the timed part and adds its fields."""
    fn = raw_one if name == "raw" else cgsnap_one
    extra = {}
    common.purge_cinder_deleted_rows()  # the same database for every phase
    with (probe or contextlib.nullcontext)() as measured:
        t0 = time.monotonic()
        done, errors = _snapshot_all(fn, backend, insts, concurrency)
        elapsed = time.monotonic() - t0
    if measured:
        extra.update(measured)
    members = sum(n for _, n in done)
    # cleanup, outside the timing
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda sn: volume_tasks.delete_set_snapshots(backend, sn[0], 300), done))
    return dict({"phase": name, "elapsed_s": elapsed, "members": members,
                 "snapshots_per_s": members / elapsed, "errors": errors}, **extra)


def _snapshot_all(fn, backend, insts, concurrency):
    errors = []
    done = []
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        futs = [pool.submit(fn, backend, inst) for inst in insts]
        for f in futs:
            try:
                done.append(f.result())
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
    return done, errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=50)
    p.add_argument("--volumes-per", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--phases", default="raw,cgsnap")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    phases = [x for x in args.phases.split(",") if x]
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # "connection pool is full"

    tmp = tempfile.mkdtemp(prefix="cgsnap-fleet-")
    common.configure_cgsnap(os.path.join(tmp, "state"))
    lab = testlab.CinderLab(common.CLOUDS)
    specs = {f"{args.volumes_per}x{i}": args.volumes_per for i in range(args.instances)}
    t0 = time.monotonic()
    by_key = common.cinder_instances(lab, specs, "fleet", in_group=False)
    print(f"fleet: {args.instances} instances ready in {time.monotonic() - t0:.1f}s",
          file=sys.stderr)
    insts = [by_key[k] for k in specs]
    domains = [testlab.domain_xml(f"fleet-{i}", e["instance_id"], e["volume_ids"][0],
                                  e["volume_ids"][1:]) for i, e in enumerate(insts)]
    uri = testlab.write_node(os.path.join(tmp, "node.xml"), domains)
    backend = common.make_cinder_backend()
    drivers.override(drivers.DriverSet(libvirt_driver.LibvirtHypervisor(uri), backend))

    # warm-up outside the measurement: one instance through each phase
    for ph in phases:
        run_phase(ph, backend, insts[:1], 1)
    runs = {ph: [] for ph in phases}
    for rep in range(args.reps):
        k = rep % len(phases)
        for ph in phases[k:] + phases[:k]:
            r = run_phase(ph, backend, insts, args.concurrency)
            runs[ph].append(r)
            print(f"fleet: rep {rep + 1} {ph}: {r['members']} members in "
                  f"{r['elapsed_s']:.1f}s = {r['snapshots_per_s']:.2f}/s, "
                  f"{len(r['errors'])} errors", file=sys.stderr)
            for e in r["errors"][:3]:
                print(f"fleet:   {e}", file=sys.stderr)
    raw = common.median([r["snapshots_per_s"] for r in runs.get("raw", [])])
    rows = []
    for ph in phases:
        rate = common.median([r["snapshots_per_s"] for r in runs[ph]])
        rows.append({"strategy": ph, "instances": args.instances,
                     "volumes_per_instance": args.volumes_per,
                     "concurrency": args.concurrency, "reps": args.reps,
                     "snapshots_per_s": rate,
                     "elapsed_s": common.median([r["elapsed_s"] for r in runs[ph]]),
                     "fraction_of_raw": paired_fraction(runs, ph),
                     "fraction_of_raw_per_rep": paired_fractions(runs, ph),
                     "fraction_of_raw_of_medians": rate / raw if raw else None,
                     "errors": sum(len(r["errors"]) for r in runs[ph])})
    doc = {"results": rows, "runs": runs, "command": _command()}
    if common.emit(doc, args.out, args.json):
        print(f"{'strategy':20} {'snap/s':>8} {'x raw':>6} {'elapsed_s':>9} {'errors':>6}")
        for r in rows:
            print(f"{r['strategy']:20} {r['snapshots_per_s']:>8.2f} "
                  f"{r['fraction_of_raw'] or 0:>6.3f} {r['elapsed_s']:>9.1f} {r['errors']:>6}")


def paired_fractions(runs, phase, key="snapshots_per_s"):
    """``phase``'s throughput over raw's, rep by rep."""
    return [r[key] / b[key] for r, b in zip(runs[phase], runs.get("raw", [])) if b[key]]


def paired_fraction(runs, phase, key="snapshots_per_s"):
    return common.median(paired_fractions(runs, phase, key))


def _command():
    rel = os.path.relpath(os.path.abspath(sys.argv[0]), common.ROOT)
    return " ".join([".venv/bin/python", rel] + sys.argv[1:])


if __name__ == "__main__":
    main()
