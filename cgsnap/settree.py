"""The snapshot tree of an instance (``cgsnap list --tree``): each set's
``parent`` is the set the instance last came from when it was taken, so the
sets of an instance form a tree, and restoring to any node starts a branch."""

from cgsnap import manifest


def build(docs):
    """``(roots, children)``: the sets with no parent among ``docs`` (oldest
    first), and each set's children (oldest first).  A set whose parent is
    gone (deleted, pruned) hangs from the root."""
    by_id = {d["id"]: d for d in docs}
    children = {d["id"]: [] for d in docs}
    roots = []
    for d in sorted(docs, key=lambda d: d["created_at"]):
        parent = d.get("parent")
        (children[parent] if parent in by_id else roots).append(d)
    return roots, children


def current(docs):
    """Where the instance stands now: the newest available set (the one a new
    set would follow)."""
    good = [d for d in docs if d["status"] == manifest.STATUS_AVAILABLE]
    return max(good, key=lambda d: d["created_at"])["id"] if good else None


def render(docs):
    """Text lines of the tree, ``*`` marking where the instance stands now."""
    roots, children = build(docs)
    now = current(docs)
    out = []

    def walk(doc, prefix, last, top):
        branch = "" if top else ("└── " if last else "├── ")
        mark = "  * now" if doc["id"] == now else ""
        out.append(f"{prefix}{branch}{doc['id'][:8]} {doc['name']} {doc['status']} "
                   f"{doc['created_at'][:19].replace('T', ' ')}{mark}")
        kids = children[doc["id"]]
        for i, kid in enumerate(kids):
            walk(kid, prefix + ("" if top else ("    " if last else "│   ")),
                 i == len(kids) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return out


def nested(docs):
    """The tree as nested dicts (``-f json``)."""
    roots, children = build(docs)
    now = current(docs)

    def node(doc):
        return {"id": doc["id"], "name": doc["name"], "status": doc["status"],
                "created_at": doc["created_at"], "now": doc["id"] == now,
                "children": [node(k) for k in children[doc["id"]]]}
    return [node(r) for r in roots]
