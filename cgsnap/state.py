"""Where cgsnap keeps its state: the catalog, the flow logbooks, the locks.

Modes (issue 10, defect 10): the CLI runs with umask 077; directories cgsnap
creates for its state and for local copies and memory images are 0711 (QEMU,
running as ``libvirt-qemu`` under libvirt's DAC driver, must traverse them to
open an overlay by its path, but may not list them); the catalog, the flow
logbooks, the locks, the local copies and the memory images are 0600.
Directories that already exist (a configured ``state_dir`` or ``local_dir``)
keep their mode: cgsnap never loosens or tightens a directory it did not make.
"""

import os

from cgsnap import exception
from cgsnap.conf import CONF

DIR_MODE = 0o711   # traversable, not listable: QEMU opens files in it by path
FILE_MODE = 0o600


def make_dir(path, mode=DIR_MODE):
    """Create ``path`` (with its parents) if missing; the directory this
    creates gets ``mode`` whatever the umask.  Raises OSError."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return path
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parent or parent == path:
            raise
        os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return path
    os.chmod(path, mode)  # mkdir's mode is cut by the umask
    return path


def private_file(path):
    """Create ``path`` empty with mode 0600 if missing; an existing file of
    ours is brought to 0600.  Returns ``path``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        secure_fd(fd)
    finally:
        os.close(fd)
    return path


def secure_fd(fd):
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 != FILE_MODE:
        os.fchmod(fd, FILE_MODE)


def secure_file(path):
    """Bring an existing file of ours to 0600 (a copy qemu-img wrote, a memory image)."""
    if os.stat(path).st_uid == os.geteuid():
        os.chmod(path, FILE_MODE)


def state_dir():
    path = os.path.abspath(os.path.expanduser(CONF.state_dir))
    try:
        make_dir(path)
    except OSError as e:
        raise exception.ConfigError(f"cannot create state directory {path}: {e.strerror}") \
            from None
    return path


def _sqlite_in_state_dir(name):
    path = os.path.join(state_dir(), name)
    try:
        private_file(path)
    except OSError as e:
        raise exception.ConfigError(f"cannot create {path}: {e.strerror}") from None
    return f"sqlite:///{path}"


def catalog_url():
    return CONF.catalog_connection or _sqlite_in_state_dir("catalog.db")


def persistence_url():
    return CONF.persistence_connection or _sqlite_in_state_dir("flows.db")


def lock_dir():
    return make_dir(os.path.join(state_dir(), "locks"), 0o700)
