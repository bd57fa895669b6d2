#!/usr/bin/env python3
"""Where cgsnap's fleet throughput goes on the dev Cinder: the Cinder process's
CPU seconds per phase, with one pre-check call at a time taken out.

The dev Cinder (api, scheduler and volume service in one eventlet process) is
CPU-bound, so fleet throughput is set by Cinder CPU per set.  Phases (each
snapshots every instance once with ``--concurrency`` workers; cleanup is not
timed):

  raw             bench/fleet.py's bare client loop
  cgsnap          cgsnap.api.create_snapshot_set, as in bench/fleet.py
  quota-every-set cgsnap with [snapshot] quota_cache_seconds = 0: the quota
                  pre-check asks Cinder's ``limits`` for every set (as a CLI
                  run does) instead of reusing an answer (cgsnap.quota)
  default-filters cgsnap as on a Cinder with its default volume filters (no
                  ``id`` filter): CheckVolumes GETs each volume
  no-volume-gets  cgsnap with CheckVolumes' volume fetch answered from one
                  earlier fetch (diagnostic only)

  python bench/fleet_breakdown.py --instances 24 --reps 2 --json
"""

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import fleet  # noqa: E402

from cgsnap import drivers  # noqa: E402
from cgsnap.drivers import libvirt_driver  # noqa: E402
from tests import lab as testlab  # noqa: E402

PHASES = ("raw", "cgsnap", "default-filters", "quota-every-set", "no-volume-gets")


def cinder_cpu_s():
    pid = subprocess.run(["pgrep", "-f", "cinder_allinone"], capture_output=True,
                         text=True).stdout.split()
    if not pid:
        raise SystemExit("fleet_breakdown: the dev Cinder is not running")
    with open(f"/proc/{pid[0]}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Diagnostic:
    """Sets up one phase: config overrides, or one pre-check call answered
    from an earlier result."""

    def __init__(self, backend, insts):
        self.backend = backend
        self.volumes = {tuple(i["volume_ids"]): backend.get_volumes(i["volume_ids"])
                        for i in insts}
        self.real = backend.get_volumes

    def set(self, phase):
        from cgsnap import quota
        from cgsnap.conf import CONF
        self.backend.get_volumes = self.real
        vars(self.backend).pop("filters_volumes_by_id", None)
        quota.forget()
        CONF.clear_override("quota_cache_seconds", group="snapshot")
        if phase == "default-filters":
            self.backend.filters_volumes_by_id = lambda: False
        elif phase == "quota-every-set":
            CONF.set_override("quota_cache_seconds", 0, group="snapshot")
        elif phase == "no-volume-gets":
            self.backend.get_volumes = lambda ids: self.volumes[tuple(ids)]


@contextlib.contextmanager
def cinder_cpu():
    """Cinder CPU seconds spent inside the block (the timed part of a phase)."""
    out = {}
    with common.HttpRequests() as http:
        c0, p0 = cinder_cpu_s(), time.process_time()
        yield out
        out["cinder_cpu_s"] = cinder_cpu_s() - c0
        out["client_cpu_s"] = time.process_time() - p0  # this process, every thread
    out["http_requests"] = dict(http.counts)


def run(phase, backend, insts, concurrency):
    r = fleet.run_phase(phase, backend, insts, concurrency, probe=cinder_cpu)
    r["cinder_cpu_ms_per_set"] = 1000 * r["cinder_cpu_s"] / len(insts)
    r["client_cpu_ms_per_set"] = 1000 * r["client_cpu_s"] / len(insts)
    r["http_requests_per_set"] = {k: v / len(insts)
                                  for k, v in sorted(r.pop("http_requests").items())}
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instances", type=int, default=24)
    p.add_argument("--volumes-per", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--phases", default=",".join(PHASES),
                   help="comma-separated subset of: " + ", ".join(PHASES))
    p.add_argument("--json", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    phases = [x for x in args.phases.split(",") if x]
    unknown = set(phases) - set(PHASES)
    if unknown or "raw" not in phases:
        p.error(f"--phases: unknown {sorted(unknown)}" if unknown else "--phases needs raw")
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    tmp = tempfile.mkdtemp(prefix="cgsnap-fleet-breakdown-")
    common.configure_cgsnap(os.path.join(tmp, "state"))
    lab = testlab.CinderLab(common.CLOUDS)
    specs = {f"{args.volumes_per}x{i}": args.volumes_per for i in range(args.instances)}
    by_key = common.cinder_instances(lab, specs, "fleet", in_group=False)
    insts = [by_key[k] for k in specs]
    uri = testlab.write_node(os.path.join(tmp, "node.xml"), [
        testlab.domain_xml(f"fleet-{i}", e["instance_id"], e["volume_ids"][0],
                           e["volume_ids"][1:]) for i, e in enumerate(insts)])
    backend = common.make_cinder_backend()
    drivers.override(drivers.DriverSet(libvirt_driver.LibvirtHypervisor(uri), backend))
    diag = Diagnostic(backend, insts)
    fleet.run_phase("cgsnap", backend, insts[:1], 1)  # warm-up
    runs = {ph: [] for ph in phases}
    for rep in range(args.reps):
        k = rep % len(phases)
        for ph in phases[k:] + phases[:k]:
            diag.set(ph)
            runs[ph].append(run(ph, backend, insts, args.concurrency))
            print(f"fleet_breakdown: rep {rep + 1} {ph}: {runs[ph][-1]}", file=sys.stderr)
    diag.set("cgsnap")
    raw = common.median([r["snapshots_per_s"] for r in runs["raw"]])
    rows = [{"phase": ph, "reps": args.reps,
             "snapshots_per_s": common.median([r["snapshots_per_s"] for r in runs[ph]]),
             "cinder_cpu_ms_per_set": common.median(
                 [r["cinder_cpu_ms_per_set"] for r in runs[ph]]),
             "client_cpu_ms_per_set": common.median(
                 [r["client_cpu_ms_per_set"] for r in runs[ph]]),
             "http_requests_per_set": _median_counts([r["http_requests_per_set"]
                                                      for r in runs[ph]])}
            for ph in phases]
    for r in rows:
        r["fraction_of_raw"] = fleet.paired_fraction(runs, r["phase"])
        r["fraction_of_raw_of_medians"] = r["snapshots_per_s"] / raw
    doc = {"results": rows, "runs": runs,
           "command": " ".join([".venv/bin/python", "bench/fleet_breakdown.py"] + sys.argv[1:])}
    if common.emit(doc, args.out, args.json):
        print(f"{'phase':16} {'snap/s':>7} {'x raw':>6} {'Cinder CPU ms/set':>18}")
        for r in rows:
            print(f"{r['phase']:16} {r['snapshots_per_s']:7.2f} {r['fraction_of_raw']:6.2f} "
                  f"{r['cinder_cpu_ms_per_set']:18.0f}")


def _median_counts(dicts):
    keys = sorted({k for d in dicts for k in d})
    return {k: common.median([d.get(k, 0.0) for d in dicts]) for k in keys}


if __name__ == "__main__":
    main()
