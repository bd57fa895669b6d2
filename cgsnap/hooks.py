"""Host-side hooks around a create (``[hooks] pre_create`` / ``post_create``).

A hook is an executable run with a clean working directory (``/``), no
stdin, its own session (so a timeout kills everything it started), and the
set's facts in ``CGSNAP_*`` environment variables.  :func:`run` returns
``None`` when the hook succeeded, or a one-line reason: the caller decides
what a failure means (a pre-hook refuses the set; a post-hook is reported).
"""

import json
import logging
import os
import signal
import subprocess

from cgsnap.conf import CONF

LOG = logging.getLogger(__name__)

_warn = [lambda msg: None]


def report_warnings_to(write):
    """Where a failed post-hook is reported besides the log (the CLI: stderr)."""
    _warn[0] = write


def environment(phase, set_id, instance, labels=None, **extra):
    env = dict(os.environ)
    env.update(CGSNAP_HOOK=phase, CGSNAP_SET_ID=set_id, CGSNAP_INSTANCE_ID=instance["id"],
               CGSNAP_INSTANCE_NAME=instance.get("name") or "",
               CGSNAP_LABELS=json.dumps(labels or {}, sort_keys=True))
    env.update({f"CGSNAP_{k.upper()}": "" if v is None else str(v) for k, v in extra.items()})
    return env


def run(path, env, timeout=None):
    """Run the hook at ``path``; None if it exited 0, else why not (one line)."""
    timeout = CONF.hooks.timeout if timeout is None else timeout
    try:
        proc = subprocess.Popen([path], env=env, cwd="/", stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        return f"could not be started: {e.strerror}"
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return f"did not finish in {timeout:g}s (killed)"
    for line in out.decode(errors="replace").splitlines():
        LOG.info("hook %s: %s", path, line)
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1][:300]
        return f"exited {proc.returncode}" + (f": {last}" if last else "")
    return None


def pre_create(set_id, instance, labels):
    """The pre-hook's reason for refusing the set, or None."""
    if not CONF.hooks.pre_create:
        return None
    why = run(CONF.hooks.pre_create, environment("pre_create", set_id, instance, labels))
    return f"pre_create hook {CONF.hooks.pre_create} {why}" if why else None


def post_create(set_id, instance, labels, status, consistency=None, exit_code=0, error=None):
    """Run the post-hook; a failure is logged and reported, never raised."""
    if not CONF.hooks.post_create:
        return None
    env = environment("post_create", set_id, instance, labels, status=status,
                      consistency=consistency, exit_code=exit_code,
                      error=(error or "").splitlines()[0] if error else None)
    why = run(CONF.hooks.post_create, env)
    if why:
        msg = f"post_create hook {CONF.hooks.post_create} {why} (set {set_id} is {status})"
        LOG.warning(msg)
        _warn[0](msg)
    return why
