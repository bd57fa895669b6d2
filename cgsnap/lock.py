"""Per-instance locks that work across processes and survive crashes.

An ``flock`` on ``<state_dir>/locks/<instance-id>.lock``: the kernel drops it
when the holder dies (even on SIGKILL), so a dead holder never blocks the next
run.  The file keeps the last holder's pid and operation for the error message.
"""

import contextlib
import fcntl
import os

from cgsnap import exception, state, wait


@contextlib.contextmanager
def instance_lock(instance_id, operation, wait_s=0.0):
    path = os.path.join(state.lock_dir(), f"{instance_id}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            wait.poll(lambda: _try_lock(fd), bool, wait_s, initial=0.05, maximum=0.5,
                      what="lock")
        except exception.WaitTimeout:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
            raise exception.Locked(
                f"instance {instance_id} is busy: another cgsnap operation holds it "
                f"({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} {operation}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _try_lock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
