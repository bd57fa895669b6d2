"""Per-instance locks that work across processes and survive crashes.

An ``flock`` on ``<state_dir>/locks/<instance-id>.lock``: the kernel drops it
when the holder dies (even on SIGKILL), so a dead holder never blocks the next
run.  The file keeps the last holder's pid and operation for the error message.
"""

import contextlib
import fcntl
import os
import threading

from cgsnap import exception, state, wait


@contextlib.contextmanager
def instance_lock(instance_id, operation, wait_s=0.0):
    path = os.path.join(state.lock_dir(), f"{instance_id}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, state.FILE_MODE)
    try:
        state.secure_fd(fd)
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


@contextlib.contextmanager
def schema_lock():
    """Serialises creating or upgrading the catalog's and the flow store's
    tables across the processes (and threads) of one host: cron may start
    several cgsnap runs at once on a fresh state directory, and two schema
    upgrades racing end in "table ... already exists".  Blocking; held only
    while the schema is checked."""
    with _schema_thread_lock:
        fd = os.open(os.path.join(state.lock_dir(), "schema.lock"), os.O_RDWR | os.O_CREAT,
                     state.FILE_MODE)
        try:
            state.secure_fd(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


_schema_thread_lock = threading.Lock()  # flock is per open file, not per thread
