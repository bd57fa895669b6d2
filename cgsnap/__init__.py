"""cgsnap: instance-level, consistency-group snapshots of virtual machines.

The public API is small:

* :func:`cgsnap.api.create_snapshot_set` / :func:`cgsnap.api.delete_snapshot_set`
  run the TaskFlow flows from :mod:`cgsnap.flows`;
* :mod:`cgsnap.manifest` describes one instance-level snapshot (versioned JSON);
* :mod:`cgsnap.naming` makes and parses the correlated member names.

The CLI (:mod:`cgsnap.cli`) is an optional layer on top.
"""

__version__ = "0.1.0"
