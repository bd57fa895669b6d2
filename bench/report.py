#!/usr/bin/env python3
"""Write bench/RESULTS.md and bench/freeze_window.png from the JSON that
bench/run.sh produced (bench/results/*.json)."""

import json
import math
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("cgsnap", "cgsnap-per-volume")
ORDER = list(VARIANTS) + ["cgsnap-fixed", "nova-sequential",
         "sequential-fastpoll", "raw-parallel", "group",
         "raw-1", "raw-2", "raw-4", "raw-8", "raw-16", "limit"]


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def machine():
    import libvirt
    import sqlalchemy
    import taskflow.version
    v = libvirt.getVersion()
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    osname = "?"
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"')
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        ("date (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("nproc", subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()),
        ("CPU", cpu), ("memory", f"{mem:.1f} GiB"), ("OS", osname),
        ("kernel", platform.release()),
        ("python", sys.version.split()[0]),
        ("libvirt (library)", f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000} (test driver)"),
        ("libvirt-python", _dist("libvirt-python")),
        ("TaskFlow", taskflow.version.version_string()),
        ("SQLAlchemy", sqlalchemy.__version__),
        ("python-cinderclient", _dist("python-cinderclient")),
        ("Cinder (dev cloud)", "29.0.0, fake driver; default shape: api+scheduler+volume in "
                               "one process on SQLite; production shape: cinder-api (1 "
                               "worker), -scheduler, -volume over RabbitMQ on MariaDB"),
    ]


def _dist(name):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def window_table(rows):
    lim = {r["volumes"]: r["freeze_window_s"] for r in rows if r["strategy"] == "limit"}
    out = ["| strategy | N | window s (median) | x limit | min..max s | api_calls (window) "
           "| total s |", "|---|---:|---:|---:|---:|---:|---:|"]
    key = lambda r: (r["volumes"], ORDER.index(r["strategy"]))  # noqa: E731
    for r in sorted(rows, key=key):
        ratio = r["freeze_window_s"] / lim[r["volumes"]]
        if r["strategy"] == "limit":
            out.append(f"| **limit** | {r['volumes']} | **{r['freeze_window_s']:.3f}** | 1.00 "
                       f"| | | {r.get('how', '')} |")
            continue
        api = f"{r['api_calls']:.0f} ({r['api_calls_window']:.0f})"
        out.append(f"| {r['strategy']} | {r['volumes']} | {r['freeze_window_s']:.3f} | "
                   f"{ratio:.2f} | {r['window_min_s']:.3f}..{r['window_max_s']:.3f} | {api} | "
                   f"{r['total_s']:.3f} |")
    return "\n".join(out)


def _ms(value):
    return "n/a" if value is None else f"{value:.0f}"


def _requests(counts):
    """``{"GET /volumes/<id>": 4.0, ...}`` as ``4.0 GET /volumes/<id>, ...``."""
    return ", ".join(f"{n:.1f} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])
                     if n) or "n/a"


def breakdown_table(rows):
    out = ["| backend | strategy | N | freeze call | freeze -> 1st create | creates | "
           "polls (count) | last poll -> thaw | thaw call | DB writes in window (time) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ms = lambda x: f"{x * 1e3:.1f}"  # noqa: E731
    for r in rows:
        b = r.get("breakdown")
        if not b:
            continue
        backend = r["backend"] + (" (production)" if r.get("shape") == "production" else "")
        out.append(f"| {backend} | {r['strategy']} | {r['volumes']} | {ms(b['freeze_call'])} "
                   f"| {ms(b['freeze_to_first_create'])} | {ms(b['creates'])} | "
                   f"{ms(b['wait_polls'])} ({b['polls']:.1f}) | {ms(b['last_poll_to_thaw'])} | "
                   f"{ms(b['thaw_call'])} | {b['db_writes_in_window']:.0f} "
                   f"({ms(b['db_write_s_in_window'])}) |")
    return "\n".join(out)


def find(rows, strategy, n):
    for r in rows:
        if r["strategy"] == strategy and r["volumes"] == n:
            return r
    return None


def acceptance(model, cinder, fleet):
    out = ["| # | target | cgsnap (product as is) | met? | "
           + " | ".join(VARIANTS[1:]) + " |",
           "|---|---|---:|:---:|" + "---:|" * (len(VARIANTS) - 1)]

    def ratio(rows, s, n):
        r, lim = find(rows, s, n), find(rows, "limit", n)
        return r["freeze_window_s"] / lim["freeze_window_s"] if r and lim else None

    def fmt(x, p=2):
        return "n/a" if x is None else f"{x:.{p}f}"

    def line(num, text, vals, ok):
        out.append(f"| {num} | {text} | {fmt(vals[0])} | {'yes' if ok else '**no**'} | "
                   + " | ".join(fmt(v) for v in vals[1:]) + " |")

    variants = VARIANTS
    if model:
        v = [ratio(model, s, 16) for s in variants]
        line("2a", "model L=0.2 N=16: window / limit <= 1.15", v, v[0] is not None and v[0] <= 1.15)
        nova = find(model, "nova-sequential", 16)
        v = [nova["freeze_window_s"] / find(model, s, 16)["freeze_window_s"]
             if nova and find(model, s, 16) else None for s in variants]
        line("2b", "model L=0.2 N=16: nova-sequential / cgsnap >= 12", v,
             v[0] is not None and v[0] >= 12)
        v = [ratio(model, s, 64) for s in variants]
        line("3", "model N=64: window / limit <= 1.25", v, v[0] is not None and v[0] <= 1.25)
    if cinder:
        v = [ratio(cinder, s, 16) for s in variants]
        line("4a", "cinder N=16: window / limit <= 1.3", v, v[0] is not None and v[0] <= 1.3)
        vals, oks = [], []
        for s in variants:
            r = find(cinder, s, 16)
            if not r:
                vals.append(None)
                continue
            bound = 16 + math.ceil(r["freeze_window_s"] / 0.05) + 5
            vals.append(r["api_calls"] / bound)
            oks.append(r["api_calls"] <= bound)
        line("4b", "cinder N=16: api_calls / (N + ceil(window/0.05 s) + 5) <= 1", vals,
             bool(oks) and oks[0])
    if fleet:
        fr = {r["strategy"]: r["fraction_of_raw"] for r in fleet["results"]}
        v = [fr.get(s) for s in variants]
        line("5", "fleet: snapshots/s >= 0.8 x raw", v, v[0] is not None and v[0] >= 0.8)
    return "\n".join(out)


def _runs(limits):
    """[4, 4, 4, 5, 6] -> '4x3 5 6'."""
    out, i = [], 0
    while i < len(limits):
        j = i
        while j < len(limits) and limits[j] == limits[i]:
            j += 1
        out.append(f"{limits[i]}x{j - i}" if j - i > 1 else str(limits[i]))
        i = j
    return " ".join(out)


def production_section(doc):
    rows = doc["results"]
    out = ["## Real Cinder, production shape (issue 11)", "",
           "`make devcloud DEVCLOUD_SHAPE=production`: cinder-api (one worker), "
           "cinder-scheduler and cinder-volume as separate processes over RabbitMQ, "
           "Cinder's tables on MariaDB, a member-role user. The 16 volumes are in **no "
           "group**, so cgsnap cuts them one by one with its adaptive create concurrency "
           "(`[snapshot] adaptive_creates`). Every `cgsnap` and `cgsnap-fixed` rep runs in a "
           "fresh process, as a cron run does: the controller starts cold "
           "(`adaptive_creates_start`). `cgsnap-fixed` is `adaptive_creates = false`, every "
           "create at once as before issue 11. `raw-K`: the bare client with K threads "
           "creating, then one list call per 0.05 s. Limit = the best median among raw-1 .. "
           "raw-16 in the same run.", "", window_table(rows), ""]
    lim = find(rows, "limit", 16)
    cg, nova = find(rows, "cgsnap", 16), find(rows, "nova-sequential", 16)
    if lim and cg and nova:
        r = cg["freeze_window_s"] / lim["freeze_window_s"]
        ok = r <= 1.05 and cg["freeze_window_s"] < nova["freeze_window_s"]
        out += ["| target (N=16) | cgsnap | met? |", "|---|---:|:---:|",
                f"| window / limit <= 1.05 and window < nova-sequential "
                f"({nova['freeze_window_s']:.3f} s) | {r:.2f} ({cg['freeze_window_s']:.3f} s) "
                f"| {'yes' if ok else '**no**'} |", ""]
    out += ["The adaptive controller's concurrency: the limit each create started under, "
            "per rep, in start order (`4x4 5x2` = four creates under a limit of 4, then two "
            "under 5).", "", "| strategy | rep | window s | limits |", "|---|---:|---:|---|"]
    for r in rows:
        for i, limits in enumerate(r.get("concurrency") or []):
            win = (r.get("windows") or [None] * (i + 1))[i]
            out.append(f"| {r['strategy']} | {i + 1} | "
                       f"{'' if win is None else f'{win:.3f}'} | {_runs(limits or [])} |")
    out.append("")
    return "\n".join(out)


def plot(model, cinder, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(t, rows) for t, rows in (("model backend, L = 0.2 s", model),
                                         ("dev Cinder 29 (fake driver)", cinder)) if rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        for s in ORDER:
            pts = sorted((r["volumes"], r["freeze_window_s"]) for r in rows if r["strategy"] == s)
            if not pts:
                continue
            style = dict(color="black", linestyle="--", linewidth=2) if s == "limit" else \
                dict(marker="o")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=s, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("volumes per instance (N)")
        ax.set_ylabel("freeze window, s (median)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    res = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results")
    model_docs = [d for d in (load(os.path.join(res, f)) for f in ("model.json", "model64.json"))
                  if d]
    model = [r for d in model_docs for r in d["results"]] or None
    cinder_doc = load(os.path.join(res, "cinder.json"))
    cinder = cinder_doc["results"] if cinder_doc else None
    fleet = load(os.path.join(res, "fleet.json"))
    pw = load(os.path.join(res, "persist_write.json"))
    fb = load(os.path.join(res, "fleet_breakdown.json"))
    prod = load(os.path.join(res, "cinder-production.json"))
    plot(model, cinder, os.path.join(HERE, "freeze_window.png"))

    md = ["# cgsnap freeze-window benchmarks (issue 5)", "",
          "Generated by `bench/run.sh` (`make bench`) with `bench/report.py`; raw data in "
          "`bench/results/*.json`. The window is measured identically for every strategy: "
          "from the start of `hypervisor.freeze()` to the return of `hypervisor.thaw()` "
          "(libvirt test driver, real libvirt API), the way cgsnap records "
          "`manifest.freeze.window_s`. `api_calls` counts every storage-backend call of one "
          "create (cgsnap: pre-checks too); in brackets, the calls inside the window.", "",
          "## Machine", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in machine()]
    md += ["", "## Commands", "", "```"]
    for d in model_docs + [cinder_doc, prod, fleet, fb, pw]:
        if d and d.get("command"):
            md.append(d["command"])
    md += ["```", "", "## Acceptance (issue 5)", "", acceptance(model, cinder, fleet), "",
           "`cgsnap` is the product as it is in this tree, with its defaults. Every "
           "benchmarked instance's volumes form one group of a consistent group type "
           "(the dev cloud's `fake-consistent`, listed in `[snapshot] "
           "consistent_group_types` as an operator whose tenants cannot read group specs "
           "would), so it cuts them with one group snapshot (`backend_consistency: group`). "
           "`cgsnap-per-volume` is the same with `[snapshot] group_snapshots = never`: "
           "parallel per-volume creates. The fleet's instances are in no group, so there "
           "cgsnap cuts volume by volume, like its raw baseline. `api_calls` counts driver "
           "calls; after the thaw in group mode, `list_group_snapshot_members` and each "
           "`tag_snapshot` are two HTTP requests each (by name and by metadata; set "
           "metadata and rename). n/a: not measured.", "",
           "![freeze window vs N](freeze_window.png)", ""]
    if model:
        p = model_docs[0]["params"]
        md += ["## Model backend", "",
               f"In-process model behind the volume-driver interface: each create takes "
               f"L = {p['latency']} s (jitter ±{p['jitter']} s, async tail {p['tail']} s, "
               f"concurrency cap {p['max_concurrency'] or 'none'}); a group snapshot is one call "
               "of the same L. Limit = L + measured freeze and thaw call time.", "",
               window_table(model), ""]
    if cinder:
        md += ["## Real Cinder (dev cloud)", "",
               "Limit = best median window of the raw client strategies (no TaskFlow, no "
               "persistence) in the same run. `latency_s` (median single create call): "
               + ", ".join(f"N={r['volumes']}: {r['latency_s']:.3f} s" for r in cinder
                           if r["strategy"] == "limit") + ".", "",
               window_table(cinder), ""]
    if prod:
        md += [production_section(prod)]
    if pw:
        md += ["## One TaskFlow logbook write (SQLite file)", "",
               "`backend.get_connection()` + `update_atom_details`, as taskflow.storage does "
               "per state change; alternating batches.", "",
               "| persistence | writes | median ms | p90 ms | max ms |",
               "|---|---:|---:|---:|---:|"]
        md += [f"| {r['backend']} | {r['writes']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
               f"{r['max_ms']:.1f} |" for r in pw["results"]]
        md.append("")
    md += ["## Where cgsnap's window goes", "",
           "Medians in ms, from the instrumented drivers (call log) and timed TaskFlow "
           "logbook writes.", "", breakdown_table((model or []) + (cinder or [])
                                                     + (prod["results"] if prod else [])), ""]
    if fleet:
        r0 = fleet["results"][0]
        md += ["## Fleet", "",
               f"{r0['instances']} instances x {r0['volumes_per_instance']} volumes, "
               f"{r0['concurrency']} concurrent workers in one process, dev Cinder; "
               f"{r0['reps']} rep(s), phases alternated, Cinder's soft-deleted rows purged "
               "before every phase. *x raw* is the median over reps of the phase's "
               "throughput over raw's in the same rep (the two ran back to back); the "
               "per-rep values and the ratio of the medians follow it.", "",
               "| strategy | member snapshots/s (median) | x raw | per rep | "
               "ratio of medians | elapsed s | errors |",
               "|---|---:|---:|---|---:|---:|---:|"]
        for r in fleet["results"]:
            per_rep = ", ".join(f"{x:.2f}" for x in r.get("fraction_of_raw_per_rep", []))
            of_medians = r.get("fraction_of_raw_of_medians", r["fraction_of_raw"])
            md.append(f"| {r['strategy']} | {r['snapshots_per_s']:.2f} | "
                      f"{r['fraction_of_raw']:.2f} | {per_rep} | {of_medians:.2f} | "
                      f"{r['elapsed_s']:.1f} | {r['errors']} |")
        md.append("")
    if fb:
        md += ["### Fleet: where Cinder's CPU goes", "",
               "`bench/fleet_breakdown.py`: the same fleet, Cinder process CPU per set "
               "(from /proc), the client's (this process's) CPU per set, and HTTP "
               "requests per set, with one setting changed or one pre-check call "
               "answered from an earlier result (see the script's "
               "docstring; the diagnostic phases are not product modes); medians of "
               f"{fb['results'][0]['reps']} reps. Cinder's soft-deleted rows are purged "
               "before every phase.", "",
               "| phase | member snapshots/s | x raw | Cinder CPU ms per set | "
               "client CPU ms per set | HTTP requests per set |",
               "|---|---:|---:|---:|---:|---|"]
        md += [f"| {r['phase']} | {r['snapshots_per_s']:.2f} | {r['fraction_of_raw']:.2f} | "
               f"{r['cinder_cpu_ms_per_set']:.0f} | "
               f"{_ms(r.get('client_cpu_ms_per_set'))} | "
               f"{_requests(r.get('http_requests_per_set') or {})} |" for r in fb["results"]]
        md.append("")
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            md += [f.read().rstrip(), ""]
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(md))
    print(f"wrote {os.path.join(HERE, 'RESULTS.md')} and freeze_window.png", file=sys.stderr)


if __name__ == "__main__":
    main()
