"""Errors cgsnap reports to users, each with its documented exit code.

Every error the CLI prints is one of these: the message is a single line meant
for an operator, and ``exit_code`` is what scripts (cron jobs) branch on.  The
table is repeated in README.md ("Exit codes"); keep both in step.
"""

EXIT_OK = 0
EXIT_ERROR = 1            # unexpected internal error (a bug): please report it
EXIT_USAGE = 2            # bad command line (argparse)
EXIT_NOT_FOUND = 3        # instance or snapshot set does not exist
EXIT_REFUSED = 4          # a pre-check refused the operation; nothing was frozen
EXIT_QUIESCE = 5          # the guest agent could not freeze the guest
EXIT_SNAPSHOT_FAILED = 6  # a member snapshot failed or timed out; the set was reverted
EXIT_LOCKED = 7           # another cgsnap operation holds this instance
EXIT_CONFIG = 8           # configuration, credentials or service endpoint problem
EXIT_INTEGRITY = 9        # a manifest failed its checksum or schema check
EXIT_CLEANUP = 10         # the revert could not remove everything: see the message
EXIT_PARTIAL = 11         # create --all-instances: some instances failed (each on its own line)
EXIT_INTERRUPTED = 130    # SIGINT/SIGTERM; the set was reverted


class CgsnapError(Exception):
    """Base class: a one-line, user-facing failure with an exit code."""

    exit_code = EXIT_ERROR

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self):
        return self.message


class NotFound(CgsnapError):
    exit_code = EXIT_NOT_FOUND


class InstanceNotFound(NotFound):
    pass


class SnapshotSetNotFound(NotFound):
    pass


class Refused(CgsnapError):
    """A pre-check failed before the guest was frozen."""

    exit_code = EXIT_REFUSED


class QuiesceFailed(CgsnapError):
    exit_code = EXIT_QUIESCE


class AgentUnreachable(QuiesceFailed):
    """The guest agent did not answer (not installed, not running, timed out)."""


class SnapshotFailed(CgsnapError):
    exit_code = EXIT_SNAPSHOT_FAILED


class WaitTimeout(SnapshotFailed):
    pass


class WindowTimeout(WaitTimeout):
    """A member (or the group snapshot) was not done by the cut's deadline;
    ``details``: ``in_window`` (the guest was frozen), ``members`` (names)."""


class Locked(CgsnapError):
    exit_code = EXIT_LOCKED


class ConfigError(CgsnapError):
    exit_code = EXIT_CONFIG


class IntegrityError(CgsnapError):
    exit_code = EXIT_INTEGRITY


class CleanupIncomplete(CgsnapError):
    exit_code = EXIT_CLEANUP


class Interrupted(CgsnapError):
    exit_code = EXIT_INTERRUPTED


class InjectedFault(CgsnapError):
    """Raised by :mod:`cgsnap.faults` at a named injection point (tests only)."""

    exit_code = EXIT_SNAPSHOT_FAILED


def by_name(name):
    """Map a class name (as stored in a TaskFlow ``Failure``) back to the class."""
    for cls in _all_subclasses(CgsnapError):
        if cls.__name__ == name:
            return cls
    return None


def _all_subclasses(cls):
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out
