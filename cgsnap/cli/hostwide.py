"""``cgsnap create --all-instances``: the options and the summary
(:mod:`cgsnap.hostrun` does the work)."""

import argparse

from cgsnap import exception
from cgsnap.cli import output

# the table leaves the error out: each failure has its own stderr line
COLUMNS = ["instance", "result", "set_id", "consistency", "freeze_window_s", "seconds",
           "pruned", "exit_code"]


def add_options(create, label_type, duration_type):
    """The host-wide options of ``create``."""
    h = create.add_argument_group(
        "host-wide run (--all-instances)",
        "one set for every running instance of this host; the summary has a row per "
        "instance; exit 11 if any failed (each failure also on its own stderr line)")
    h.add_argument("--all-instances", action="store_true",
                   help="every running domain of this host (instead of INSTANCE)")
    h.add_argument("--match", action="append", default=[], metavar="GLOB",
                   help="only domains whose name or UUID matches (repeatable: any)")
    h.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out domains whose name or UUID matches (repeatable)")
    h.add_argument("--domain-label", action="append", type=label_type, default=[],
                   metavar="KEY=VALUE",
                   help="only domains carrying this label in their libvirt metadata "
                        "(namespace https://cgsnap.dev/xmlns/labels/1; repeatable: all)")
    h.add_argument("--concurrency", type=_positive, default=2, metavar="K",
                   help="instances snapshotted at the same time (default 2)")
    h.add_argument("--prune", metavar="POLICY",
                   type=lambda text: _policy(text, duration_type),
                   help="after each instance's set succeeded, prune that instance: "
                        "'keep-daily=7,keep-weekly=4' (the rules of 'cgsnap prune', "
                        "min-keep=1 unless given); never after a failed set")
    create.add_argument("--wait-lock", type=float, metavar="S",
                        help="wait up to S seconds for another cgsnap operation on the "
                             "instance to finish, instead of exiting 7 at once (default: "
                             "[DEFAULT] lock_wait)")


def _positive(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 1 or more")
    return n


def _policy(text, duration_type):
    from cgsnap import hostrun
    try:
        return hostrun.parse_prune_policy(text, duration_type)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check(args, parser_error):
    """Usage errors of the host-wide options (argparse's ``error``: exit 2)."""
    hostwide = [o for o, v in (("--match", args.match), ("--exclude", args.exclude),
                               ("--domain-label", args.domain_label),
                               ("--prune", args.prune)) if v]
    if args.all_instances and args.instance:
        parser_error("give INSTANCE or --all-instances, not both")
    if not args.all_instances and not args.instance:
        parser_error("give INSTANCE, or --all-instances for every running instance")
    if hostwide and not args.all_instances:
        parser_error(f"{', '.join(hostwide)} needs --all-instances "
                     "(for one instance, run 'cgsnap prune' after it)")
    if args.all_instances and args.idempotency_key:
        parser_error("--idempotency-key names one set: it cannot go with --all-instances")


def run(args, create_kw, stdout, stderr):
    """Run it, print the summary; return the exit code."""
    from cgsnap import hostrun

    def progress(row):
        if args.verbose:
            stderr.write(f"cgsnap: {row['instance']}: {row['result']}"
                         f"{' ' + row['set_id'] if row['set_id'] else ''}\n")

    rows = hostrun.run(create_kw, match=args.match, exclude=args.exclude,
                       domain_labels=dict(args.domain_label), concurrency=args.concurrency,
                       prune=args.prune, progress=progress)
    failed = [r for r in rows if r["result"] != "ok"]
    if args.format == "json":
        import json
        stdout.write(json.dumps({"instances": rows, "succeeded": len(rows) - len(failed),
                                 "failed": len(failed)}, indent=2, ensure_ascii=False) + "\n")
    else:
        cols = COLUMNS + ["error"] * (args.format != "table")
        output.emit_list(args.format, cols, [[r[c] for c in cols] for r in rows], stdout)
    for r in failed:
        stderr.write(f"cgsnap: error: {r['instance']} ({r['instance_id']}): exit "
                     f"{r['exit_code']}: {r['error']}\n")
    if args.format == "table":
        stdout.write(f"{len(rows) - len(failed)} of {len(rows)} instances succeeded\n")
    return exception.EXIT_PARTIAL if failed else exception.EXIT_OK
