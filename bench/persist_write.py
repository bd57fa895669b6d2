#!/usr/bin/env python3
"""Cost of one TaskFlow logbook write, the way taskflow.storage makes it
(``backend.get_connection()`` then ``update_atom_details``), on a SQLite file:
stock ``taskflow.persistence.backends.fetch`` against
``cgsnap.persistence.fetch_backend``.  Alternating batches, medians.

  python bench/persist_write.py --writes 200 --reps 5 --json
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid

from taskflow.persistence import backends as tf_backends
from taskflow.persistence import models

from cgsnap import persistence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def stock(url):
    backend = tf_backends.fetch({"connection": url})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


def prepare(backend):
    book = models.LogBook("bench")
    fd = models.FlowDetail("flow", str(uuid.uuid4()))
    ad = models.TaskDetail("task", str(uuid.uuid4()))
    fd.add(ad)
    book.add(fd)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return ad


def batch(backend, ad, writes):
    out = []
    for i in range(writes):
        ad.results = {"i": i, "payload": "x" * 200}
        t0 = time.perf_counter()
        with contextlib.closing(backend.get_connection()) as conn:
            conn.update_atom_details(ad)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--writes", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="cgsnap-persist-")
    variants = {"stock": stock, "lean": persistence.fetch_backend}
    setups = {}
    for name, fetch in variants.items():
        backend = fetch(f"sqlite:///{os.path.join(tmp, name + '.db')}")
        setups[name] = (backend, prepare(backend))
    times = {name: [] for name in variants}
    for rep in range(args.reps):
        for name in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):
            times[name].extend(batch(*setups[name], args.writes))
    rows = [{"backend": name, "writes": len(ts), "median_ms": statistics.median(ts) * 1e3,
             "p90_ms": sorted(ts)[int(len(ts) * 0.9)] * 1e3, "max_ms": max(ts) * 1e3}
            for name, ts in times.items()]
    doc = {"results": rows,
           "command": " ".join([".venv/bin/python", "bench/persist_write.py"] + sys.argv[1:])}
    if common.emit(doc, args.out, args.json):
        for r in rows:
            print(f"{r['backend']:6} median {r['median_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms  "
                  f"max {r['max_ms']:.2f} ms  ({r['writes']} writes)")


if __name__ == "__main__":
    main()
