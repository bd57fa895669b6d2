"""Where cgsnap keeps its state: the catalog, the flow logbooks, the locks."""

import os

from cgsnap import exception
from cgsnap.conf import CONF


def state_dir():
    path = os.path.abspath(os.path.expanduser(CONF.state_dir))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise exception.ConfigError(f"cannot create state directory {path}: {e.strerror}") \
            from None
    return path


def catalog_url():
    return CONF.catalog_connection or f"sqlite:///{os.path.join(state_dir(), 'catalog.db')}"


def persistence_url():
    return CONF.persistence_connection or f"sqlite:///{os.path.join(state_dir(), 'flows.db')}"


def lock_dir():
    path = os.path.join(state_dir(), "locks")
    os.makedirs(path, exist_ok=True)
    return path
