"""The ``cgsnap`` command line: an optional layer over :mod:`cgsnap.api`."""
