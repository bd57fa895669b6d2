"""Fault-matrix reporting: one row per case and the summary line

    fault-matrix: <N> cases, <P> passed, <F> failed, frozen_left=<K>, orphans=<M>
"""

import pytest

from ..functional.conftest import config_file_owns_the_state  # noqa: F401 (autouse)

RESULTS = []  # dicts: case, rc, outcome, seconds, frozen_left, orphans, ok


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.write_line("")
    tr.write_line(f"{'case':58} {'rc':>4} {'outcome':10} {'secs':>6} frozen orphans ok")
    for r in RESULTS:
        tr.write_line(f"{r['case']:58} {r['rc']:>4} {r['outcome']:10} {r['seconds']:6.2f} "
                      f"{r['frozen_left']:>6} {r['orphans']:>7} {'yes' if r['ok'] else 'NO'}")
    slowest = max(RESULTS, key=lambda r: r["seconds"])
    tr.write_line(f"slowest case: {slowest['case']} ({slowest['seconds']:.2f}s)")
    passed = sum(r["ok"] for r in RESULTS)
    tr.write_line(
        f"fault-matrix: {len(RESULTS)} cases, {passed} passed, {len(RESULTS) - passed} failed, "
        f"frozen_left={sum(r['frozen_left'] for r in RESULTS)}, "
        f"orphans={sum(r['orphans'] for r in RESULTS)}")
