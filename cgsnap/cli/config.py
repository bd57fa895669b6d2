"""Configuration for the CLI: find the config file, parse it, set up logging.

Search order (the first that exists wins), unless ``--config-file`` is given:
``$CGSNAP_CONFIG``, ``./cgsnap.conf``, then oslo.config's standard places
(``~/.cgsnap/cgsnap.conf``, ``~/cgsnap.conf``, ``/etc/cgsnap/cgsnap.conf``,
``/etc/cgsnap.conf``).

``./cgsnap.conf`` comes from whatever directory cgsnap was started in, and it
can redirect ``state_dir`` and ``local_dir`` (and so what ``gc`` deletes).
When running as root, cgsnap reads it only if root owns it and neither group
nor others can write it; otherwise it is skipped with a one-line warning and
the search goes on.
"""

import os
import stat
import sys

from oslo_config import cfg
from oslo_log import log as logging

from cgsnap import exception, progress
from cgsnap.conf import CONF


def default_config_files(stderr=sys.stderr):
    env = os.environ.get("CGSNAP_CONFIG")
    if env:
        return [env]
    standard = cfg.find_config_files(project="cgsnap")[:1]
    if os.path.isfile("cgsnap.conf"):
        here = os.path.abspath("cgsnap.conf")
        why = _untrusted_as_root(here)
        if not why:
            return [here]
        instead = f"using {standard[0]} instead" if standard else "using the built-in defaults"
        stderr.write(f"cgsnap: warning: ignoring {here}: {why} and cgsnap runs as root (it "
                     f"reads ./cgsnap.conf only if root owns it and group and others cannot "
                     f"write it); {instead}\n")
    return standard


def _untrusted_as_root(path):
    """Why root must not read ``path`` (None: it may, or we are not root).
    stat() follows a symlink: the file read is the one checked."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(path)
    except OSError as e:
        return f"it cannot be checked ({e.strerror})"
    if st.st_uid != 0:
        return f"it is owned by uid {st.st_uid}"
    writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
                if st.st_mode & bit]
    if writable:
        return f"it is writable by {' and '.join(writable)} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def load(args, stderr=sys.stderr):
    files = args.config_file or default_config_files(stderr)
    for path in files:
        if not os.path.isfile(path):
            raise exception.ConfigError(f"config file not found: {path}")
        if not os.access(path, os.R_OK):
            raise exception.ConfigError(f"config file not readable: {path}")
    try:
        CONF([], project="cgsnap", default_config_files=files, validate_default_values=True)
    except (cfg.ConfigFilesNotFoundError, cfg.ConfigFilesPermissionDeniedError,
            cfg.ConfigFileParseError, cfg.ConfigFileValueError, ValueError) as e:
        raise exception.ConfigError(f"bad configuration: {str(e).splitlines()[0]}") from None
    if args.os_cloud:
        CONF.set_override("cloud", args.os_cloud, group="openstack")
    _setup_logging(args)
    if stderr.isatty():
        progress.set_reporter(lambda msg: stderr.write(f"\r{msg}\033[K") or stderr.flush())


def _setup_logging(args):
    """Logs go to <state_dir>/cgsnap.log unless configured; stderr gets them
    only with -v/--debug, so a failure prints exactly one line."""
    from cgsnap import state
    if args.debug:
        CONF.set_override("debug", True)
    if args.verbose or args.debug:
        CONF.set_override("use_stderr", True)
    elif not CONF.log_file and not CONF.log_dir:
        try:
            CONF.set_override("log_file", os.path.join(state.state_dir(), "cgsnap.log"))
        except exception.ConfigError:
            pass
        CONF.set_override("use_stderr", False)
    try:
        logging.setup(CONF, "cgsnap")
    except OSError as e:
        raise exception.ConfigError(f"cannot open the log file: {e}") from None
    except RuntimeError as e:  # use_journal without the systemd bindings
        raise exception.ConfigError(
            f"cannot log as configured: {e} (use_journal needs the systemd Python "
            "bindings, Debian python3-systemd; use_syslog = true reaches journald "
            "through /dev/log without them)") from None
