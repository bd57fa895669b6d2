"""What the next cron run does after a chaos case, in ONE process per case:
for every catalog (config file) the case used, ``cgsnap recover``, then
``cgsnap gc --grace-period 0``, then ``list`` and ``show`` for the checks.

Input (argv[1], JSON): ``{"confs": [...], "recover_env": {...} | null,
"show_all": bool}``.  Output (stdout, JSON): per config file, each command's
``[exit code, stdout, stderr]``.  ``recover_env`` arms chaos hooks (see
:mod:`tests.chaos.cgsnapw`) for the recover only: a condition that outlasts
the failed create (a block commit that keeps failing) meets the next cron's
recover as well; gc comes after it is gone.
"""

import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMAND = [sys.executable, "-P", "-c",
           f"import sys; sys.path.insert(0, {ROOT!r}); "
           "from tests.chaos.post import main; main()"]


def _run(conf, *argv):
    from cgsnap.cli import main as cli
    out, err = io.StringIO(), io.StringIO()
    try:
        rc = cli.run(["--config-file", conf, *argv], stdout=out, stderr=err)
    except BaseException as e:  # noqa: BLE001 - a traceback is a finding, not a harness crash
        rc, err = 1, io.StringIO(f"chaos post: {argv[0]} raised {type(e).__name__}: {e}")
    return [rc, out.getvalue(), err.getvalue()]


def main():
    spec = json.loads(sys.argv[1])
    from cgsnap import drivers, faults
    from tests.chaos import cgsnapw
    result = {}
    for conf in spec["confs"]:
        r = result[conf] = {}
        drivers.override(None)
        saved = dict(os.environ)
        os.environ.update(spec.get("recover_env") or {})
        cgsnapw.arm()
        r["recover"] = _run(conf, "recover", "-f", "json")
        faults.reset()
        os.environ.clear()
        os.environ.update(saved)
        drivers.override(None)
        r["gc"] = _run(conf, "gc", "--grace-period", "0", "-f", "json")
        r["list"] = _run(conf, "list", "-f", "json")
        r["show"] = {}
        if r["list"][0] == 0:
            for row in json.loads(r["list"][1]):
                if spec.get("show_all") or row.get("status") in ("available", "failed"):
                    r["show"][row["id"]] = _run(conf, "show", row["id"], "-f", "json")
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
