"""``cgsnap``: instance-level, consistency-group snapshots of virtual machines.

Exit codes are documented in :mod:`cgsnap.exception` and README.md.
"""

import argparse
import os
import signal
import sys

from cgsnap import __version__, exception
from cgsnap.cli import hostwide, output

DESCRIPTION = """\
Take consistent snapshots of a whole virtual machine: freeze the guest's
filesystems through the QEMU guest agent, snapshot the root disk and every
attached Cinder volume (and local disk, with [snapshot] local_disks = qcow2)
in parallel, thaw, and record one manifest.  Any
failure reverts everything: the guest is thawed and partial snapshots are
deleted.

Configuration is read from the first file found of: --config-file,
$CGSNAP_CONFIG, ./cgsnap.conf (root: only if owned by root and not
group/other-writable), ~/.cgsnap/cgsnap.conf, ~/cgsnap.conf,
/etc/cgsnap/cgsnap.conf, /etc/cgsnap.conf.  OpenStack credentials come from
clouds.yaml (--os-cloud) or OS_* variables; a plain libvirt host needs none
with [snapshot] local_disks = qcow2."""

EPILOG = """\
exit codes:
  0 success             5 guest could not be frozen   9 manifest integrity error
  1 internal error      6 member snapshot failed     10 revert left something behind
  2 bad command line    7 instance busy (locked)    130 interrupted
  3 not found           8 config / credentials / endpoint error
  4 refused by a pre-check (nothing was frozen or created)
 11 create --all-instances: some instances failed (each named on stderr)"""


def _label(text):
    """``K=V`` (argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give a label as KEY=VALUE")
    return key, value


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text):
    """``90m``, ``36h``, ``2d``, ``1w2d``, ``3600`` (seconds) -> seconds (argparse type)."""
    import re
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw]?)", text.strip().lower())
    if not parts or "".join(a + b for a, b in parts) != text.strip().lower():
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration such as 36h, 2d or 1w2d")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _count(text):
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 0 or more")
    return n


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-f", "--format", choices=output.FORMATS, default="table",
                        help="output format (default: table)")

    p = argparse.ArgumentParser(
        prog="cgsnap", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"cgsnap {__version__}")
    p.add_argument("--config-file", action="append", metavar="PATH",
                   help="configuration file (repeatable; replaces the default search)")
    p.add_argument("--os-cloud", metavar="NAME", help="cloud name in clouds.yaml")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.add_argument("--debug", action="store_true", help="debug logging to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser(
        "create", parents=[common], help="snapshot an instance as one consistent set",
        description="Freeze INSTANCE, snapshot its root disk (and with --all-volumes every "
                    "other attached disk) in parallel, thaw, and record the manifest. A set "
                    "that would capture nothing is refused before the freeze.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    c.add_argument("instance", metavar="INSTANCE", nargs="?",
                   help="libvirt domain name or UUID (or --all-instances)")
    c.add_argument("--all-volumes", action="store_true",
                   help="include every attached disk, not only the root: Cinder volumes, and "
                        "file-backed disks when [snapshot] local_disks = qcow2 (otherwise "
                        "they are skipped and listed in the manifest's skipped_disks)")
    c.add_argument("--allow-shared-volumes", action="store_true",
                   help="take a volume also attached to another instance (multiattach); "
                        "the freeze cannot quiesce that instance, so the member is recorded "
                        "as crash-consistent (default: refuse)")
    c.add_argument("--name", help="name of the set (default: <instance>-<UTC time>)")
    c.add_argument("--exclude-volume", action="append", default=[], metavar="VOLUME_ID",
                   help="leave this attached volume out (repeatable)")
    c.add_argument("--exclude-root", action="store_true",
                   help="leave the root disk out (e.g. an image-backed root)")
    q = c.add_mutually_exclusive_group()
    q.add_argument("--require-quiesce", dest="allow_crash", action="store_false",
                   default=None,
                   help="fail if the guest agent cannot freeze the guest (the default)")
    q.add_argument("--allow-crash-consistent", dest="allow_crash", action="store_true",
                   help="if the guest agent does not answer, take a crash-consistent set")
    c.add_argument("--memory", action="store_true",
                   help="also capture memory and CPU state (external memory image). The guest "
                        "is paused instead of frozen: the set is consistent as of the memory "
                        "image, not of a filesystem freeze")
    c.add_argument("--timeout", type=float, metavar="S",
                   help="longest freeze in seconds (default: [libvirt]freeze_timeout)")
    c.add_argument("--idempotency-key", metavar="KEY",
                   help="a retried call with the same key returns the set already made")
    c.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                   help="a label of the set (repeatable): stored in the manifest and in each "
                        "member's metadata (cgsnap_label_KEY); 'prune --label' selects by it")
    hostwide.add_options(c, _label, _duration)

    ls = sub.add_parser("list", parents=[common], help="list snapshot sets")
    ls.add_argument("--instance", metavar="INSTANCE", help="only this instance (name or UUID)")
    ls.add_argument("--status", help="only sets in this status (available, failed, ...)")
    ls.add_argument("--tree", action="store_true",
                    help="with --instance: draw the instance's sets as a tree (each set under "
                         "the one the instance came from); '* now' marks where it stands")

    sh = sub.add_parser("show", parents=[common],
                        help="show one set's manifest (checksum verified)")
    sh.add_argument("set_id", metavar="SNAPSHOT_SET_ID", help="set id (or a unique 8+ prefix)")

    r = sub.add_parser(
        "recover", parents=[common], help="revert sets left 'creating' by a crash",
        description="Find snapshot sets whose cgsnap process died (crash, kill -9, power "
                    "loss) and revert them: thaw/resume the guest, put local disks back, "
                    "delete members, mark the manifest failed. Safe to run at any time (for "
                    "example at boot or before each cron job); sets still in progress are "
                    "skipped. 'cgsnap create' recovers its own instance first.")
    r.add_argument("--instance", metavar="INSTANCE", help="only this instance")

    g = sub.add_parser(
        "gc", parents=[common], help="delete cgsnap members that belong to no live set",
        description="Find Cinder snapshots, Glance images and local copies tagged by cgsnap "
                    "whose set is not available/creating/deleting (a revert that could not "
                    "finish, or made out of band) and delete them, images first. Snapshots "
                    "with volumes created from them are reported, never forced. Only members "
                    "of this catalog (their cgsnap_catalog_id) are collected, unless "
                    "--any-catalog.")
    g.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    g.add_argument("--grace-period", type=float, default=3600.0, metavar="S",
                   help="leave anything younger than S seconds alone (default 3600)")
    g.add_argument("--no-images", action="store_true",
                   help="do not look at Glance (clouds without an image service)")
    g.add_argument("--any-catalog", action="store_true",
                   help="also collect members that another catalog (another host, e.g. "
                        "before a live migration) made, and members without a catalog id "
                        "whose set this catalog does not know. By default only this "
                        "catalog's members are collected")
    g.add_argument("--any-instance", action="store_true", dest="any_catalog",
                   help=argparse.SUPPRESS)  # its older, narrower name

    d = sub.add_parser("delete", help="delete sets: every member, then the manifest")
    d.add_argument("set_ids", nargs="+", metavar="SNAPSHOT_SET_ID")
    d.add_argument("--force", action="store_true",
                   help="also delete protected sets (never a file a guest still uses)")

    for verb, what in (("protect", "never pruned, deleted only with 'delete --force'"),
                       ("unprotect", "prunable and deletable again")):
        pr = sub.add_parser(verb, parents=[common], help=f"mark sets {verb}ed: {what}")
        pr.add_argument("set_ids", nargs="+", metavar="SNAPSHOT_SET_ID")

    vf = sub.add_parser(
        "verify", parents=[common], help="check that sets still exist as recorded",
        description="For each set: the manifest's checksum; for an available set, every "
                    "member: the Cinder snapshot exists and is available, the Glance image "
                    "is active, local copies and the memory image exist with the recorded "
                    "size and sha256. Reports drift per set; exit 9 if any set is broken. "
                    "Changes nothing. Run it weekly from cron.")
    vf.add_argument("set_ids", nargs="*", metavar="SNAPSHOT_SET_ID",
                    help="sets to verify (default with --all: every set)")
    vf.add_argument("--all", action="store_true", help="every set of this catalog")

    pn = sub.add_parser(
        "prune", parents=[common], help="delete old sets by a retention policy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Keep what the rules keep and delete the rest, for each instance separately.
The period rules are Proxmox VE's prune-backups rules: applied in the order
below, newest set first, in local time (--timezone), with ISO weeks; in each
period the newest set is kept until N periods are covered, and a period an
earlier rule covered is skipped.

Only 'available' sets whose manifest verifies are good and count toward a
rule; failed sets never count and go by --keep-failed.  --keep-within is
measured from the newest good set, not from now.  Whatever the rules say,
at least --min-keep good sets of each instance stay.  Protected sets, sets
still 'creating' or 'deleting' and corrupt ones are always kept.  A set whose
snapshots have volumes made from them is kept as 'busy'.  Deletes go on past
a failure; every failure is reported and the exit code is 10.""")
    pn.add_argument("--instance", metavar="INSTANCE", help="only this instance (name or UUID)")
    for rule, what in (("last", "the N newest sets"), ("hourly", "one set for each of N hours"),
                       ("daily", "... N days"), ("weekly", "... N ISO weeks"),
                       ("monthly", "... N months"), ("yearly", "... N years")):
        pn.add_argument(f"--keep-{rule}", type=_count, default=0, metavar="N",
                        help=f"keep {what}")
    pn.add_argument("--keep-within", type=_duration, metavar="DURATION",
                    help="keep every good set this much younger than the newest good set "
                         "(36h, 2d, 1w2d)")
    pn.add_argument("--keep-failed", type=_count, default=0, metavar="N",
                    help="keep the N newest failed sets (default 0)")
    pn.add_argument("--min-keep", type=_count, default=1, metavar="N",
                    help="never fewer than N good sets of an instance (default 1)")
    pn.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE",
                    help="only sets with this label (repeatable: all of them)")
    pn.add_argument("--timezone", metavar="TZ",
                    help="IANA time zone of the periods (default: the host's)")
    pn.add_argument("--dry-run", action="store_true",
                    help="delete nothing: print every set with keep or remove and why")
    pn.add_argument("--no-rules-delete-all", dest="allow_empty", action="store_true",
                    help="without any --keep-* rule, delete every set (down to --min-keep); "
                         "refused otherwise")
    p.commands = sub.choices  # each command's own parser, for its usage errors
    return p


PRUNE_COLUMNS = ["id", "instance_id", "created_at", "status", "keep", "reason", "result"]


def _summary(doc):
    fr = doc.get("freeze") or {}
    rows = [
        ("id", doc["id"]), ("name", doc["name"]), ("instance", doc.get("instance_name")),
        ("instance_id", doc["instance_id"]), ("status", doc["status"]),
        ("status_reason", doc.get("status_reason")), ("consistency", doc.get("consistency")),
        ("backend_consistency", doc.get("backend_consistency")),
        ("group_snapshot", (doc.get("group_snapshot") or {}).get("id")),
        ("freeze_window_s", fr.get("window_s")),
        ("filesystems_frozen", fr.get("filesystems_frozen")),
        ("created_at", doc["created_at"]), ("root_excluded", doc.get("root_excluded")),
    ]
    for m in doc["members"]:
        ref = m.get("snapshot_id") or m.get("image_id") or "-"
        rows.append((f"member {m['device']}", f"{m['name']} {m['status']} {ref}"))
    rows.append(("checksum", doc["checksum"]))
    return rows


LIST_COLUMNS = ["id", "name", "instance", "status", "consistency", "members",
                "freeze_window_s", "created_at"]


def _list_row(doc):
    return [doc["id"], doc["name"], doc.get("instance_name") or doc["instance_id"],
            doc["status"], doc.get("consistency"), len(doc["members"]),
            (doc.get("freeze") or {}).get("window_s"), doc["created_at"]]


def _write_metrics(api, stderr, run=None, **values):
    """The Prometheus textfile ([metrics] textfile_dir), after a create, prune or
    verify; a failure to write it is reported, never changes the exit code."""
    from cgsnap.conf import CONF
    if not CONF.metrics.textfile_dir:
        return
    try:
        from cgsnap import metrics
        if run:
            metrics.record_run(run, **values)
        metrics.write(api.list_snapshot_sets())
    except Exception as e:  # noqa: BLE001 - the set's outcome stands either way
        stderr.write(f"cgsnap: warning: could not write the metrics textfile: {e}\n")


def _on_signal(signum, _frame):
    raise exception.Interrupted(f"interrupted by signal {signum}; reverting")


def run(argv=None, stdout=None, stderr=None):
    """Run the CLI; return the exit code (never raises for expected errors)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "create":
            hostwide.check(args, parser.commands["create"].error)
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code or 0)
    try:
        from cgsnap.cli import config as cli_config
        cli_config.load(args, stderr)
        from cgsnap import hooks
        hooks.report_warnings_to(lambda msg: stderr.write(f"cgsnap: warning: {msg}\n"))
        from cgsnap import api  # imported after config: drivers read it
        if args.command == "create":
            create_kw = dict(
                name=args.name, all_volumes=args.all_volumes,
                exclude_volumes=args.exclude_volume, exclude_root=args.exclude_root,
                allow_crash_consistent=args.allow_crash, timeout=args.timeout,
                idempotency_key=args.idempotency_key, memory=args.memory,
                allow_shared_volumes=args.allow_shared_volumes, labels=dict(args.label),
                lock_wait=args.wait_lock)
            try:
                if args.all_instances:
                    return hostwide.run(args, create_kw, stdout, stderr)
                doc = api.create_snapshot_set(args.instance, **create_kw)
            finally:  # a failed set is a metric too
                _write_metrics(api, stderr)
            output.emit_doc(args.format, doc, stdout, _summary(doc))
        elif args.command == "list" and args.tree:
            if not args.instance:
                stderr.write("cgsnap: error: --tree needs --instance\n")
                return exception.EXIT_USAGE
            from cgsnap import settree
            docs = [d for d in api.list_snapshot_sets(args.instance, args.status)
                    if d["status"] != "corrupt"]
            if args.format in ("json", "yaml"):
                output.emit_doc(args.format, settree.nested(docs), stdout)
            else:
                stdout.write("".join(line + "\n" for line in settree.render(docs)))
        elif args.command == "list":
            docs = api.list_snapshot_sets(args.instance, args.status)
            output.emit_list(args.format, LIST_COLUMNS, [_list_row(d) for d in docs], stdout)
        elif args.command == "show":
            doc = api.show_snapshot_set(args.set_id)
            output.emit_doc(args.format, doc, stdout, _summary(doc))
        elif args.command == "recover":
            rows = api.recover(args.instance)
            cols = ["id", "instance_id", "was", "action", "result"]
            output.emit_list(args.format, cols, [[r[c] for c in cols] for r in rows], stdout)
            incomplete = [r for r in rows if r["result"] == "incomplete"]
            for r in incomplete:  # never a non-zero exit without the reason
                stderr.write(f"cgsnap: error: set {r['id']} ({r['action']}): left behind: "
                             f"{r.get('detail') or 'see the set status_reason'}\n")
            if incomplete:
                return exception.EXIT_CLEANUP
        elif args.command == "gc":
            from cgsnap import gc
            notes = []
            rows = gc.collect(args.dry_run, args.grace_period, images=not args.no_images,
                              any_catalog=args.any_catalog, notes=notes)
            for note in notes:
                stderr.write(f"cgsnap: note: {note}\n")
            if not args.dry_run:
                from cgsnap import runner
                from cgsnap.conf import CONF
                runner.prune_logbooks(CONF.logbook_retention_days)
            cols = ["kind", "id", "name", "set_id", "action", "reason"]
            output.emit_list(args.format, cols, [[r[c] for c in cols] for r in rows], stdout)
            for r in rows:
                if r["action"] == "stuck":
                    stderr.write(f"cgsnap: error: {r['kind']} {r['id']}: {r['reason']}\n")
            if any(r["action"] in ("failed", "stuck") for r in rows):
                return exception.EXIT_CLEANUP
        elif args.command == "delete":
            rc = exception.EXIT_OK
            for set_id in args.set_ids:
                try:
                    doc = api.delete_snapshot_set(set_id, force=args.force)
                    stdout.write(f"deleted {doc['id']} ({len(doc['members'])} members)\n")
                except exception.CgsnapError as e:
                    stderr.write(f"cgsnap: error: {e}\n")
                    rc = e.exit_code
            return rc
        elif args.command == "verify":
            if bool(args.set_ids) == bool(args.all):
                stderr.write("cgsnap: error: give set ids or --all\n")
                return exception.EXIT_USAGE
            rows = api.verify_snapshot_sets(args.set_ids or None)
            cols = ["id", "instance_id", "status", "result", "problems"]
            output.emit_list(args.format, cols,
                             [[r[c] if c != "problems" or args.format == "json"
                               else "; ".join(r[c]) for c in cols] for r in rows], stdout)
            broken = [r for r in rows if r["result"] == "broken"]
            _write_metrics(api, stderr, "verify", broken=len(broken))
            for r in broken:
                stderr.write(f"cgsnap: error: set {r['id']}: {'; '.join(r['problems'])}\n")
            if broken:
                return exception.EXIT_INTEGRITY
        elif args.command in ("protect", "unprotect"):
            rows = [api.protect_snapshot_set(s, args.command == "protect") for s in args.set_ids]
            output.emit_list(args.format, ["id", "name", "protected"],
                             [[d["id"], d["name"], d["protected"]] for d in rows], stdout)
        elif args.command == "prune":
            policy = {f"keep_{r}": getattr(args, f"keep_{r}") for r in
                      ("last", "hourly", "daily", "weekly", "monthly", "yearly")}
            policy.update(keep_within=args.keep_within, keep_failed=args.keep_failed,
                          min_keep=args.min_keep, labels=dict(args.label),
                          timezone=args.timezone, allow_empty=args.allow_empty)
            rows = api.prune(policy, args.instance, dry_run=args.dry_run)
            output.emit_list(args.format, PRUNE_COLUMNS,
                             [[r[c] for c in PRUNE_COLUMNS] for r in rows], stdout)
            failed = [r for r in rows if r["result"].startswith("failed")]
            _write_metrics(api, stderr, "prune", failed=len(failed),
                           deleted=sum(r["result"] == "deleted" for r in rows))
            for r in failed:
                stderr.write(f"cgsnap: error: set {r['id']}: {r['result']}\n")
            if failed:
                return exception.EXIT_CLEANUP
        return exception.EXIT_OK
    except exception.CgsnapError as e:
        stderr.write(f"cgsnap: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        stderr.write("cgsnap: error: interrupted\n")
        return exception.EXIT_INTERRUPTED
    except Exception as e:  # a bug: one line here, the traceback in the log
        import logging
        logging.getLogger("cgsnap").exception("unexpected error")
        stderr.write(f"cgsnap: error: internal error: {type(e).__name__}: {e} "
                     "(details in the log file; please report)\n")
        return exception.EXIT_ERROR


def main():
    os.umask(0o077)  # catalog, logbooks, locks, copies, memory images: owner only
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        sys.exit(run())
    except BrokenPipeError:  # e.g. `cgsnap list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(exception.EXIT_ERROR)


if __name__ == "__main__":
    main()
