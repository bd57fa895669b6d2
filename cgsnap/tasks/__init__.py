"""TaskFlow tasks, one module per thing they touch.

* :mod:`.hypervisor` -- the guest: discovery, agent check, freeze, thaw;
* :mod:`.volume` -- Cinder: pre-checks, parallel snapshot fan-out, cleanup;
* :mod:`.catalog` -- cgsnap's own catalog: record the set, finalize, mark failed.

Rules every task follows (see the README's "Writing tasks"):

* inputs and results are JSON-serialisable dicts and ids, never client objects;
* drivers come from :func:`cgsnap.drivers.get` (or are injected for tests);
* ``revert`` checks for a ``Failure``, undoes, then logs and swallows cleanup
  errors, so a revert never stops the reverts after it;
* every task is safe to run twice (resumption re-runs interrupted atoms).
"""
