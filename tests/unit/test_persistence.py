"""cgsnap's lean TaskFlow backend: the same logbook, fewer writes."""

import contextlib

import pytest
import sqlalchemy as sa
from taskflow import engines, states, task
from taskflow.patterns import linear_flow
from taskflow.persistence import backends, models

from cgsnap import persistence


class Step(task.Task):
    def execute(self):
        return {"done": self.name}


def _run_counting_atom_updates(backend):
    updates = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("UPDATE ATOMDETAILS"):
            updates.append(statement)
    sa.event.listen(backend._engine, "before_cursor_execute", count)
    book = models.LogBook("book")
    flow = linear_flow.Flow("f").add(Step("a"), Step("b"), Step("c"))
    engine = engines.load(flow, backend=backend, book=book, engine="serial")
    engine.run()
    return len(updates), book, engine.storage.flow_uuid


def _stock(url):
    backend = backends.fetch({"connection": url})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


@pytest.mark.parametrize("make", [_stock, persistence.fetch_backend], ids=["stock", "lean"])
def test_progress_only_writes_are_skipped_and_the_logbook_is_complete(tmp_path, make):
    url = f"sqlite:///{tmp_path}/flows.db"
    updates, book, flow_uuid = _run_counting_atom_updates(make(url))
    # Stock TaskFlow: 18 atom UPDATEs for 3 tasks.  6 of them change only the
    # progress, and 3 rewrite unchanged atoms when the flow's state changes.
    assert updates == (9 if make is persistence.fetch_backend else 18)
    # What a resumed run reads back from a fresh connection is whole.
    with contextlib.closing(_stock(url).get_connection()) as conn:
        fd = conn.get_logbook(book.uuid).find(flow_uuid)
        atoms = {ad.name: ad for ad in fd}
    assert {n: (ad.state, ad.results) for n, ad in atoms.items()} == {
        n: (states.SUCCESS, {"done": n}) for n in "abc"}
