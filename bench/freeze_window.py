#!/usr/bin/env python3
"""Freeze-window benchmark: cgsnap against Nova-style baselines, in one run.

Every strategy runs in the same process on the same instance; repetitions
alternate strategies (the order rotates each repetition) so that machine drift
hits all of them alike; rows report medians.  The window is always measured
the same way: from the start of hypervisor.freeze() to the return of
hypervisor.thaw(), on libvirt's test driver (real libvirt API).

Every instance's volumes form one group of a consistent group type (the dev
cloud's ``fake-consistent``, listed in ``[snapshot] consistent_group_types``
as its operator would), so the product takes its group-snapshot path.

Strategies
  cgsnap               cgsnap.api.create_snapshot_set with the product's defaults: the
                       real create flow and persistence (SQLite in a temporary
                       state_dir); the volumes form a consistent group, so one group
                       snapshot cuts them
  cgsnap-per-volume    the same with [snapshot] group_snapshots = never: parallel
                       per-volume creates, one list call per poll
  nova-sequential      creates one by one, then polls each snapshot with its own GET
                       every 0.5 s until it leaves 'creating' (Nova's
                       _wait_for_snapshots_completion, FixedIntervalLoopingCall(0.5))
  sequential-fastpoll  creates one by one, then one list call per 0.05 s
  raw-parallel         all creates at once from a warm pool, one list call per 0.05 s
                       (bare client, no TaskFlow, no persistence)
  group                one group snapshot of the instance's volume group, GET per 0.05 s
  raw-K                (K = 1, 2, 4, 8, 16) creates from K client threads, then one
                       list call per 0.05 s: the raw per-volume client at K threads
  cgsnap-fixed         cgsnap with [snapshot] adaptive_creates = false: every create
                       at once (up to max_parallel_creates), as before issue 11
  limit                model: L + measured freeze and thaw call time;
                       cinder: best median window of the raw client strategies
                       (nova-sequential, sequential-fastpoll, raw-parallel, group);
                       with raw-K strategies in the run: the best median among them
                       (the best raw per-volume client)

Shapes of the dev cloud (--shape, tools/devcloud/README.md): ``default`` (Cinder in
one process on SQLite; volumes in one consistent group each) and ``production``
(cinder-api, -scheduler, -volume over RabbitMQ on MariaDB, a member user; the
volumes are in NO group, so cgsnap cuts them one by one with its adaptive
create concurrency).  On the production shape every cgsnap rep runs in a fresh
process (--fresh-process, the default there), as a cron run does: its
concurrency controller starts cold.  The cgsnap rows show the limit each
create started under, per rep (``concurrency``).

  python bench/freeze_window.py --backend model --latency 0.2 --volumes 1,4,16,64 --reps 5
  python bench/freeze_window.py --backend cinder --volumes 1,4,16 --reps 3 --json
  python bench/freeze_window.py --backend cinder --shape production --volumes 16 --json
"""

import argparse
import concurrent.futures
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

from cgsnap import api, drivers, naming  # noqa: E402
from cgsnap.drivers import libvirt_driver  # noqa: E402
from cgsnap.tasks import volume as volume_tasks  # noqa: E402
from tests import lab as testlab  # noqa: E402

FAST_POLL = 0.05
NOVA_POLL = 0.5
THREADS = (1, 2, 4, 8, 16)
RAW_K = tuple(f"raw-{k}" for k in THREADS)
RAW = ("nova-sequential", "sequential-fastpoll", "raw-parallel", "group") + RAW_K
CGSNAP = ("cgsnap", "cgsnap-per-volume", "cgsnap-fixed")
ALL = ("cgsnap", "cgsnap-per-volume", "nova-sequential", "sequential-fastpoll",
       "raw-parallel", "group")
PRODUCTION = ("cgsnap", "nova-sequential") + RAW_K


class Ctx:
    """One instance under test, with instrumented drivers."""

    def __init__(self, backend, hypervisor, instance_id, volume_ids, group_id, pool,
                 child=None):
        self.child = child  # set: cgsnap runs in a fresh process (see run_cgsnap_child)
        self.pools = {}
        self.log = common.CallLog()
        self.raw = backend
        self.vols = common.CountingVolumes(backend, self.log)
        self.hyp = common.TimedHypervisor(hypervisor, self.log)
        self.instance_id = instance_id
        self.volume_ids = volume_ids
        self.group_id = group_id
        self.pool = pool


def _meta(set_id):
    return {naming.META_SET_ID: set_id}


def _poll_list(ctx, set_id, n):
    while True:
        t0 = time.monotonic()
        snaps = ctx.vols.list_snapshots(set_id)
        if len(snaps) >= n and all(s["status"] != "creating" for s in snaps):
            return snaps
        time.sleep(max(0.0, FAST_POLL - (time.monotonic() - t0)))


def _check(snaps):
    bad = [s for s in snaps if s["status"] != "available"]
    if bad:
        raise RuntimeError(f"snapshot went to {bad[0]['status']}")


def run_nova_sequential(ctx, set_id):
    ctx.hyp.freeze(ctx.instance_id)
    try:
        ids = [ctx.vols.create_snapshot(v, f"bench-{set_id[:8]}-{i}", _meta(set_id))["id"]
               for i, v in enumerate(ctx.volume_ids)]
        for sid in ids:  # FixedIntervalLoopingCall(interval=0.5), one snapshot after another
            while True:
                t0 = time.monotonic()
                snap = ctx.vols.get_snapshot(sid)
                if snap["status"] != "creating":
                    _check([snap])
                    break
                time.sleep(max(0.0, NOVA_POLL - (time.monotonic() - t0)))
    finally:
        ctx.hyp.thaw(ctx.instance_id)
    return {"set_id": set_id}


def run_sequential_fastpoll(ctx, set_id):
    ctx.hyp.freeze(ctx.instance_id)
    try:
        for i, v in enumerate(ctx.volume_ids):
            ctx.vols.create_snapshot(v, f"bench-{set_id[:8]}-{i}", _meta(set_id))
        _check(_poll_list(ctx, set_id, len(ctx.volume_ids)))
    finally:
        ctx.hyp.thaw(ctx.instance_id)
    return {"set_id": set_id}


def run_raw_parallel(ctx, set_id):
    ctx.hyp.freeze(ctx.instance_id)
    try:
        futs = [ctx.pool.submit(ctx.vols.create_snapshot, v, f"bench-{set_id[:8]}-{i}",
                                _meta(set_id)) for i, v in enumerate(ctx.volume_ids)]
        for f in futs:
            f.result()
        _check(_poll_list(ctx, set_id, len(ctx.volume_ids)))
    finally:
        ctx.hyp.thaw(ctx.instance_id)
    return {"set_id": set_id}


def run_raw_threads(k):
    """The raw per-volume client with ``k`` threads: creates from a warm pool
    of k threads, then one list call per 0.05 s."""
    def run(ctx, set_id):
        pool = ctx.pools.get(k)
        if pool is None:
            pool = ctx.pools[k] = concurrent.futures.ThreadPoolExecutor(max_workers=k)
        ctx.hyp.freeze(ctx.instance_id)
        try:
            futs = [pool.submit(ctx.vols.create_snapshot, v, f"bench-{set_id[:8]}-{i}",
                                _meta(set_id)) for i, v in enumerate(ctx.volume_ids)]
            for f in futs:
                f.result()
            _check(_poll_list(ctx, set_id, len(ctx.volume_ids)))
        finally:
            ctx.hyp.thaw(ctx.instance_id)
        return {"set_id": set_id}
    return run


def run_group(ctx, set_id):
    ctx.hyp.freeze(ctx.instance_id)
    try:
        gs = ctx.vols.create_group_snapshot(
            ctx.group_id, f"bench-{set_id[:8]}",
            naming.group_snapshot_description(set_id, ctx.instance_id))
        while True:
            t0 = time.monotonic()
            status = ctx.vols.get_group_snapshot(gs["id"])["status"]
            if status != "creating":
                break
            time.sleep(max(0.0, FAST_POLL - (time.monotonic() - t0)))
    finally:
        ctx.hyp.thaw(ctx.instance_id)
    if status != "available":
        raise RuntimeError(f"group snapshot went to {status}")
    return {"set_id": set_id}


def run_cgsnap(ctx, set_id):
    if ctx.child is not None:
        return run_cgsnap_child(ctx, set_id)
    drivers.override(drivers.DriverSet(ctx.hyp, ctx.vols))
    volume_tasks.last_cut_concurrency.clear()
    doc = api.create_snapshot_set(ctx.instance_id, all_volumes=True)
    return {"set_id": doc["id"], "manifest_window_s": doc["freeze"]["window_s"],
            "backend_consistency": doc["backend_consistency"],
            "concurrency": dict(volume_tasks.last_cut_concurrency)}


def run_cgsnap_child(ctx, set_id):
    """One cgsnap run in a fresh process (cold imports, sessions and
    concurrency controller, as a cron run): this script with --child.  The
    child measures its window the same way and returns its call log."""
    spec = dict(ctx.child, instance_id=ctx.instance_id)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"cgsnap child failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, t0, t1 in out.pop("events"):
        ctx.log.add(name, t0, t1)  # CLOCK_MONOTONIC: the same clock in every process
    return out


def child_main(spec):
    """--child: one cgsnap run on a cold process; prints its result and call log."""
    common.configure_cgsnap(spec["state_dir"], spec.get("max_parallel_creates"),
                            adaptive=spec.get("adaptive", True))
    if spec.get("per_volume"):
        from cgsnap.conf import CONF
        CONF.set_override("group_snapshots", "never", group="snapshot")
    backend = common.make_cinder_backend(spec["shape"])
    ctx = Ctx(backend, libvirt_driver.LibvirtHypervisor(spec["uri"]), spec["instance_id"],
              [], None, None)
    out = run_cgsnap(ctx, None)
    out["events"] = ctx.log.snapshot()
    print(json.dumps(out))


def run_cgsnap_fixed(ctx, set_id):
    from cgsnap.conf import CONF
    if ctx.child is not None:
        child, ctx.child = ctx.child, dict(ctx.child, adaptive=False)
        try:
            return run_cgsnap_child(ctx, set_id)
        finally:
            ctx.child = child
    CONF.set_override("adaptive_creates", False, group="snapshot")
    try:
        return run_cgsnap(ctx, set_id)
    finally:
        CONF.clear_override("adaptive_creates", group="snapshot")


def run_cgsnap_per_volume(ctx, set_id):
    from cgsnap.conf import CONF
    if ctx.child is not None:
        child, ctx.child = ctx.child, dict(ctx.child, per_volume=True)
        try:
            return run_cgsnap_child(ctx, set_id)
        finally:
            ctx.child = child
    CONF.set_override("group_snapshots", "never", group="snapshot")
    try:
        return run_cgsnap(ctx, set_id)
    finally:
        CONF.clear_override("group_snapshots", group="snapshot")


RUNNERS = {"cgsnap": run_cgsnap, "cgsnap-per-volume": run_cgsnap_per_volume,
           "cgsnap-fixed": run_cgsnap_fixed,
           "nova-sequential": run_nova_sequential,
           "sequential-fastpoll": run_sequential_fastpoll, "raw-parallel": run_raw_parallel,
           "group": run_group, **{f"raw-{k}": run_raw_threads(k) for k in THREADS}}


def cleanup(ctx, out):
    """Every strategy tags its snapshots (or its group snapshot's description)
    with the set id, so the product's own set cleanup removes them."""
    volume_tasks.delete_set_snapshots(ctx.raw, out["set_id"], 180)


def breakdown(events, t_f0, t_t1):
    """Where a cgsnap window went (seconds), from the call log."""
    fr = [e for e in events if e[0] == "freeze"][0]
    th = [e for e in events if e[0] == "thaw"][-1]
    creates = [e for e in events if e[0] in ("create_snapshot", "create_group_snapshot")]
    lists = [e for e in events if e[0] in ("list_snapshots", "get_group_snapshot")
             and fr[1] <= e[1] <= th[2]]
    db = [e for e in events if e[0].startswith("db.") and t_f0 <= e[1] <= t_t1]
    if not creates or not lists:
        return {}
    c0 = min(e[1] for e in creates)
    c1 = max(e[2] for e in creates)
    l1 = max(e[2] for e in lists)
    return {"freeze_call": fr[2] - fr[1], "freeze_to_first_create": c0 - fr[2],
            "creates": c1 - c0, "wait_polls": l1 - c1, "last_poll_to_thaw": th[1] - l1,
            "thaw_call": th[2] - th[1], "polls": len(lists),
            "db_writes_in_window": len(db), "db_write_s_in_window": sum(e[2] - e[1] for e in db)}


def run_one(ctx, strategy):
    ctx.log.reset()
    set_id = naming.new_set_id()
    t0 = time.monotonic()
    out = RUNNERS[strategy](ctx, set_id)
    total = time.monotonic() - t0
    events = ctx.log.snapshot()
    window, fcall, tcall, t_f0, t_t1 = common.window_of(events)
    calls = common.storage_calls([e for e in events if not e[0].startswith("db.")])
    rec = {"window": window, "total": total, "api_calls": len(calls),
           "api_calls_window": len(common.storage_calls(calls, t_f0, t_t1)),
           "freeze_call": fcall, "thaw_call": tcall,
           "create_calls": [e[2] - e[1] for e in calls if e[0] == "create_snapshot"]}
    if strategy.startswith("cgsnap"):
        rec["manifest_window_s"] = out.get("manifest_window_s")
        rec["backend_consistency"] = out.get("backend_consistency")
        rec["breakdown"] = breakdown(events, t_f0, t_t1)
        rec["concurrency"] = out.get("concurrency") or {}
    try:
        cleanup(ctx, out)
    except Exception as e:  # keep benchmarking; report it
        print(f"bench: cleanup of {out['set_id']} failed: {e}", file=sys.stderr)
    return rec


def summarize(strategy, backend, n, latency, recs):
    row = {"strategy": strategy, "backend": backend, "volumes": n, "latency_s": latency,
           "freeze_window_s": common.median([r["window"] for r in recs]),
           "api_calls": common.median([r["api_calls"] for r in recs]),
           "api_calls_window": common.median([r["api_calls_window"] for r in recs]),
           "total_s": common.median([r["total"] for r in recs]), "reps": len(recs),
           "window_min_s": min(r["window"] for r in recs),
           "window_max_s": max(r["window"] for r in recs),
           "windows": [r["window"] for r in recs]}
    if strategy.startswith("cgsnap"):
        row["manifest_window_s"] = common.median([r["manifest_window_s"] for r in recs])
        row["backend_consistency"] = sorted({str(r["backend_consistency"]) for r in recs})
        keys = recs[0]["breakdown"].keys()
        row["breakdown"] = {k: common.median([r["breakdown"].get(k) for r in recs])
                            for k in keys}
        # The limit each create started under, per rep (adaptive controller).
        row["concurrency"] = [r["concurrency"].get("limits") for r in recs]
    return row


def setup_model(args, sizes, tmp):
    backend = common.ModelBackend(args.latency, args.jitter, args.max_concurrency, args.tail)
    domains, insts = [], {}
    for n in sizes:
        iid = testlab.new_instance_id()
        vids = [backend.add_volume(attached_to=[iid]) for _ in range(n)]
        domains.append(testlab.domain_xml(f"bench-{n}", iid, vids[0], vids[1:]))
        insts[n] = {"instance_id": iid, "volume_ids": vids, "group_id": backend.add_group(vids)}
    uri = testlab.write_node(os.path.join(tmp, "node.xml"), domains)
    return backend, libvirt_driver.LibvirtHypervisor(uri), insts


def setup_cinder(sizes, tmp, shape):
    lab = common.cinder_lab(shape)
    # The production shape's volumes are in no group: cgsnap cuts them one by one.
    in_group = shape == "default"
    tag = "freeze-window" if in_group else f"freeze-window-{shape}"
    insts = common.cinder_instances(lab, {n: n for n in sizes}, tag, in_group=in_group)
    domains = [testlab.domain_xml(f"bench-{n}", e["instance_id"], e["volume_ids"][0],
                                  e["volume_ids"][1:]) for n, e in insts.items()]
    uri = testlab.write_node(os.path.join(tmp, "node.xml"), domains)
    return (common.make_cinder_backend(shape), libvirt_driver.LibvirtHypervisor(uri), insts,
            uri)


def main(argv=None):
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        return child_main(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("model", "cinder"), default="model")
    p.add_argument("--shape", choices=("default", "production"), default="default",
                   help="cinder: which dev cloud (tools/devcloud/README.md)")
    p.add_argument("--fresh-process", action=argparse.BooleanOptionalAction, default=None,
                   help="cinder: run each cgsnap rep in a fresh process (default: on for "
                        "the production shape)")
    p.add_argument("--latency", type=float, default=0.2,
                   help="model: time to a member's point in time (s)")
    p.add_argument("--jitter", type=float, default=0.0, help="model: ± uniform jitter (s)")
    p.add_argument("--tail", type=float, default=0.0,
                   help="model: time a snapshot stays 'creating' after its create returns")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="model: cap on creates in flight (default: none)")
    p.add_argument("--volumes", default="1,4,16,64")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--strategies", default=None,
                   help=f"default: {','.join(ALL)}; production shape: {','.join(PRODUCTION)}")
    p.add_argument("--max-parallel-creates", type=int, default=None,
                   help="override cgsnap's [snapshot]max_parallel_creates (default: product "
                        "default)")
    p.add_argument("--fixed-creates", action="store_true",
                   help="[snapshot] adaptive_creates = false for every cgsnap strategy "
                        "(all creates at once, as before issue 11)")
    p.add_argument("--json", action="store_true", help="print the JSON document")
    p.add_argument("--out", help="also write the JSON document here")
    args = p.parse_args(argv)
    if os.environ.get("CGSNAP_BENCH_LOG"):  # e.g. INFO: the controller's limits per cut
        logging.basicConfig(level=os.environ["CGSNAP_BENCH_LOG"], stream=sys.stderr)
    sizes = [int(x) for x in args.volumes.split(",") if x]
    production = args.backend == "cinder" and args.shape == "production"
    strategies = [s for s in (args.strategies or ",".join(PRODUCTION if production else ALL))
                  .split(",") if s]
    fresh = args.fresh_process if args.fresh_process is not None else production

    tmp = tempfile.mkdtemp(prefix="cgsnap-bench-")
    common.configure_cgsnap(os.path.join(tmp, "state"), args.max_parallel_creates,
                            adaptive=not args.fixed_creates)
    child = None
    if args.backend == "model":
        backend, hyp, insts = setup_model(args, sizes, tmp)
    else:
        backend, hyp, insts, uri = setup_cinder(sizes, tmp, args.shape)
        if fresh:
            child = {"shape": args.shape, "uri": uri, "state_dir": os.path.join(tmp, "state"),
                     "max_parallel_creates": args.max_parallel_creates,
                     "adaptive": not args.fixed_creates}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(sizes))
    raw_pools = {}
    db_log = None
    results = []
    for n in sizes:
        e = insts[n]
        ctx = Ctx(backend, hyp, e["instance_id"], e["volume_ids"], e["group_id"], pool, child)
        ctx.pools = raw_pools  # warm across N
        db_log = ctx.log
        recs = {s: [] for s in strategies}
        # warm-up (outside the measurement): imports, engine load, connections, pools
        for s in strategies:
            if (s.startswith("cgsnap") or s in ("raw-parallel", "group") + RAW_K[1:]
                    or n <= 4):
                run_one(ctx, s)
        with common.PersistenceTimer(db_log):
            for rep in range(args.reps):
                k = rep % len(strategies)
                for s in strategies[k:] + strategies[:k]:
                    recs[s].append(run_one(ctx, s))
                    conc = recs[s][-1].get("concurrency", {}).get("limits")
                    print(f"bench: {args.backend} N={n} rep {rep + 1}/{args.reps} {s}: "
                          f"window {recs[s][-1]['window']:.3f}s"
                          + (f" concurrency {conc}" if conc else ""), file=sys.stderr)
        rows = []
        latency = args.latency if args.backend == "model" else common.median(
            [c for s in ("nova-sequential", "sequential-fastpoll", "raw-1") if s in recs
             for r in recs[s] for c in r["create_calls"]])
        for s in strategies:
            rows.append(summarize(s, args.backend, n, latency, recs[s]))
            if args.backend == "cinder":
                rows[-1]["shape"] = args.shape
        allrecs = [r for s in strategies for r in recs[s]]
        fcall = common.median([r["freeze_call"] for r in allrecs])
        tcall = common.median([r["thaw_call"] for r in allrecs])
        if args.backend == "model":
            rounds = math.ceil(n / args.max_concurrency) if args.max_concurrency else 1
            jit = args.jitter * (n - 1) / (n + 1)  # expected slowest of n uniform members
            limit = rounds * args.latency + jit + args.tail + fcall + tcall
            how = f"L + freeze call {fcall * 1e3:.2f} ms + thaw call {tcall * 1e3:.2f} ms"
        elif any(r["strategy"] in RAW_K for r in rows):
            raw = [r for r in rows if r["strategy"] in RAW_K]
            best = min(raw, key=lambda r: r["freeze_window_s"])
            limit = best["freeze_window_s"]
            how = (f"best raw per-volume client: {best['strategy']} (of "
                   f"{', '.join(r['strategy'] for r in raw)})")
        else:
            raw = [r for r in rows if r["strategy"] in RAW]
            best = min(raw, key=lambda r: r["freeze_window_s"])
            limit, how = best["freeze_window_s"], f"best raw strategy: {best['strategy']}"
            nogroup = [r["freeze_window_s"] for r in raw if r["strategy"] != "group"]
            if nogroup:
                how += f"; best without group snapshots: {min(nogroup):.3f} s"
        rows.append({"strategy": "limit", "backend": args.backend, "volumes": n,
                     "latency_s": latency, "freeze_window_s": limit, "api_calls": None,
                     "total_s": None, "reps": args.reps, "how": how,
                     "freeze_call_s": fcall, "thaw_call_s": tcall})
        results.extend(rows)
        print_table(rows, file=sys.stderr)
    doc = {"results": results, "command": _command(),
           "params": {"backend": args.backend, "shape": args.shape if args.backend == "cinder"
                      else None, "fresh_process": bool(fresh), "in_group": not production,
                      "latency": args.latency, "jitter": args.jitter,
                      "tail": args.tail, "max_concurrency": args.max_concurrency,
                      "reps": args.reps, "max_parallel_creates": args.max_parallel_creates,
                      "adaptive_creates": not args.fixed_creates,
                      "fast_poll_s": FAST_POLL, "nova_poll_s": NOVA_POLL}}
    if common.emit(doc, args.out, args.json):
        print_table(results)
    pool.shutdown()
    for p_ in raw_pools.values():
        p_.shutdown()


def print_table(rows, file=None):
    file = file or sys.stdout
    lim = {r["volumes"]: r["freeze_window_s"] for r in rows if r["strategy"] == "limit"}
    print(f"{'strategy':21} {'N':>3} {'window_s':>9} {'x limit':>8} {'api':>6} {'total_s':>8}",
          file=file)
    for r in rows:
        ratio = r["freeze_window_s"] / lim[r["volumes"]] if r["volumes"] in lim else None
        api_calls = "" if r["api_calls"] is None else f"{r['api_calls']:.0f}"
        total = "" if r["total_s"] is None else f"{r['total_s']:.3f}"
        conc = ""
        if r.get("concurrency") and any(r["concurrency"]):
            conc = "  concurrency per rep: " + "; ".join(
                _runs(c) for c in r["concurrency"] if c)
        print(f"{r['strategy']:21} {r['volumes']:>3} {r['freeze_window_s']:>9.4f} "
              f"{ratio:>8.3f} {api_calls:>6} {total:>8}{conc}", file=file)


def _runs(limits):
    """[4, 4, 4, 5, 6] -> '4x3 5 6': the limit each create started under."""
    out, i = [], 0
    while i < len(limits):
        j = i
        while j < len(limits) and limits[j] == limits[i]:
            j += 1
        out.append(f"{limits[i]}x{j - i}" if j - i > 1 else str(limits[i]))
        i = j
    return " ".join(out)



def _command():
    rel = os.path.relpath(os.path.abspath(sys.argv[0]), common.ROOT)
    return " ".join([".venv/bin/python", rel] + sys.argv[1:])


if __name__ == "__main__":
    main()
