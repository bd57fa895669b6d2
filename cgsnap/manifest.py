"""The manifest: one versioned JSON document per instance-level snapshot.

The JSON Schema ships in ``cgsnap/schemas/manifest-v<N>.json``.  A manifest is
a plain dict (so it can travel through TaskFlow's store); this module builds,
seals and verifies it:

* :func:`seal` sets ``checksum`` = ``sha256:`` + hex digest of the canonical
  JSON of every other field (sorted keys, no whitespace, UTF-8);
* :func:`verify` recomputes it and validates against the schema.
"""

import copy
import datetime
import functools
import hashlib
import json
from importlib import resources

import jsonschema

from cgsnap import exception

SCHEMA_VERSION = 2
# Every version cgsnap can read; a new field goes into a new version, optional,
# and the older documents stay readable (their schema is kept).
READABLE_VERSIONS = (1, 2)

STATUS_CREATING = "creating"
STATUS_AVAILABLE = "available"
STATUS_FAILED = "failed"
STATUS_DELETING = "deleting"
STATUS_ERROR_DELETING = "error_deleting"

CONSISTENCY_FILESYSTEM = "filesystem"
CONSISTENCY_CRASH = "crash"
CONSISTENCY_MEMORY = "memory"

KIND_CINDER_SNAPSHOT = "cinder-snapshot"
KIND_GLANCE_IMAGE = "glance-image"
KIND_LOCAL_QCOW2 = "local-qcow2"


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def isotime(when=None):
    """RFC 3339 UTC timestamp with microseconds."""
    return (when or utcnow()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.cache
def schema(version=SCHEMA_VERSION):
    text = resources.files("cgsnap").joinpath(f"schemas/manifest-v{version}.json").read_text()
    return json.loads(text)


def new(set_id, name, instance, members, options, root_excluded=False,
        excluded_volumes=(), skipped_disks=(), hypervisor_uri=None, idempotency_key=None,
        labels=None, machine=None, parent=None):
    """A manifest in status ``creating`` (not yet sealed)."""
    now = isotime()
    return {
        "schema_version": SCHEMA_VERSION,
        "id": set_id,
        "name": name,
        "instance_id": instance["id"],
        "instance_name": instance.get("name"),
        "hypervisor_uri": hypervisor_uri,
        "status": STATUS_CREATING,
        "status_reason": None,
        "created_at": now,
        "updated_at": now,
        "consistency": None,
        "backend_consistency": None,
        "group_snapshot": None,
        "freeze": {"started_at": None, "frozen_at": None, "thaw_started_at": None,
                   "ended_at": None, "window_s": None, "filesystems_frozen": None,
                   "filesystems_thawed": None, "agent": None, "guard": None},
        "memory": None,
        "root_excluded": bool(root_excluded),
        "excluded_volumes": list(excluded_volumes),
        "skipped_disks": [dict(d) for d in skipped_disks],
        "options": dict(options),
        "idempotency_key": idempotency_key,
        "labels": dict(labels or {}),
        "protected": False,
        "machine": copy.deepcopy(machine),
        "parent": parent,
        "members": [dict(m) for m in members],
        "checksum": "sha256:" + "0" * 64,
    }


LABEL_KEY_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def sha256_file(path):
    """The hex sha256 of a member's file (a local copy, a memory image), as
    the manifest records it and ``cgsnap verify`` checks it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current(doc):
    """``doc`` in the current schema version (a copy): a v1 manifest gains v2's
    optional fields with their defaults.  Only for a document about to be
    changed and re-sealed; reading never rewrites."""
    out = copy.deepcopy(doc)
    if out.get("schema_version", SCHEMA_VERSION) < 2:
        out.update(schema_version=2, labels={}, protected=False)
    return out


def canonical_json(doc):
    """The bytes the checksum covers: every field but ``checksum``."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_checksum(doc):
    return "sha256:" + hashlib.sha256(canonical_json(doc)).hexdigest()


def seal(doc):
    """Return a copy with ``updated_at`` and ``checksum`` set, schema-validated."""
    out = copy.deepcopy(doc)
    out["updated_at"] = isotime()
    out["checksum"] = compute_checksum(out)
    validate(out)
    return out


@functools.cache
def _validator(version):
    """One validator per schema version; the schema itself is checked once
    (``jsonschema.validate`` re-checks it on every call: 60 ms a manifest)."""
    sch = schema(version)
    cls = jsonschema.validators.validator_for(sch)
    cls.check_schema(sch)
    return cls(sch)


def validate(doc):
    try:
        error = jsonschema.exceptions.best_match(
            _validator(doc.get("schema_version", SCHEMA_VERSION)).iter_errors(doc))
        if error is not None:
            raise error
    except (jsonschema.ValidationError, FileNotFoundError) as e:
        where = "/".join(str(p) for p in getattr(e, "absolute_path", ())) or "(root)"
        msg = getattr(e, "message", str(e))
        raise exception.IntegrityError(
            f"manifest {doc.get('id')} does not match its schema at {where}: {msg}") from None


def verify(doc):
    """Check the checksum and the schema; return the manifest unchanged."""
    expected = compute_checksum(doc)
    if doc.get("checksum") != expected:
        raise exception.IntegrityError(
            f"manifest {doc.get('id')} checksum mismatch: stored {doc.get('checksum')}, "
            f"computed {expected}")
    validate(doc)
    return doc


def dumps(doc):
    """Pretty, stable JSON for humans and files."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False)
