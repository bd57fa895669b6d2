"""Correlated, deterministic names for snapshot-set members, and their metadata.

A member name tells an operator at a glance which instance and which set a
Cinder snapshot or Glance image belongs to, and it parses back::

    cgsnap-<instance8>-<set8>-<role>-<device>
    cgsnap-6695eb01-0c1f9a2e-vol-vdb

``role`` is ``root`` or ``vol``; ``device`` is the guest target (vda, vdb, ...).
Names are pure functions of (instance id, set id, role, device), so a re-run
or a revert finds what an earlier attempt created.  Names never contain the
user-given set name: that goes, sanitised, into the manifest and metadata.

The metadata (Cinder snapshot metadata, Glance image properties) is the
authoritative link from any member back to its set.
"""

import re
import unicodedata
import uuid
from typing import NamedTuple, Optional

PREFIX = "cgsnap"
# Cinder limits names and metadata values to 255 characters, Glance to 255.
MAX_NAME_LEN = 255
MAX_SET_NAME_LEN = 128

ROLE_ROOT = "root"
ROLE_VOLUME = "volume"
_ROLE_TAG = {ROLE_ROOT: "root", ROLE_VOLUME: "vol"}
_TAG_ROLE = {v: k for k, v in _ROLE_TAG.items()}

# Metadata keys carried by every member.
META_SET_ID = "cgsnap_set_id"
META_INSTANCE_ID = "cgsnap_instance_id"
META_ROLE = "cgsnap_role"
META_DEVICE = "cgsnap_device"
META_SCHEMA_VERSION = "cgsnap_schema_version"
META_SET_NAME = "cgsnap_set_name"
# The random id of the catalog that owns the member (see cgsnap.db, revision 0002):
# gc collects only its own catalog's members.
META_CATALOG_ID = "cgsnap_catalog_id"
META_LABEL_PREFIX = "cgsnap_label_"  # + the label's key: a member carries its set's labels

_MEMBER_RE = re.compile(
    r"^cgsnap-(?P<instance>[0-9a-f]{8})-(?P<set>[0-9a-f]{8})-(?P<role>root|vol)-(?P<device>[a-z0-9]{1,32})$"
)
_DEVICE_RE = re.compile(r"[^a-z0-9]")


class MemberName(NamedTuple):
    instance_short: str
    set_short: str
    role: str
    device: str


def short_id(any_id):
    """First 8 hex digits of a UUID (dashes ignored), lower case."""
    hexdigits = str(any_id).replace("-", "").lower()
    if len(hexdigits) < 8 or not re.fullmatch(r"[0-9a-f]+", hexdigits[:8]):
        raise ValueError(f"not a UUID-like id: {any_id!r}")
    return hexdigits[:8]


def sanitize_device(device):
    dev = _DEVICE_RE.sub("", str(device).lower())[:32]
    if not dev:
        raise ValueError(f"device name {device!r} has no usable characters")
    return dev


def member_name(instance_id, set_id, role, device):
    """The deterministic name of one member of a set."""
    if role not in _ROLE_TAG:
        raise ValueError(f"unknown member role {role!r}")
    return "-".join(
        (PREFIX, short_id(instance_id), short_id(set_id), _ROLE_TAG[role], sanitize_device(device))
    )


def group_snapshot_name(instance_id, set_id):
    """The deterministic name of a set's Cinder group snapshot.  Cinder gives
    the group snapshot's member snapshots this name too, until cgsnap renames
    them to their member names after the thaw."""
    return "-".join((PREFIX, short_id(instance_id), short_id(set_id), "group"))


_GROUP_DESC_RE = re.compile(
    r"^cgsnap set (?P<set>[0-9a-f-]{36}) of instance (?P<instance>[0-9a-f-]{36})$")


def group_snapshot_description(set_id, instance_id):
    """Group snapshots carry no metadata in Cinder: the description is their
    authoritative link back to the set (see :func:`parse_group_snapshot_description`)."""
    return f"cgsnap set {set_id} of instance {instance_id}"


def parse_group_snapshot_description(text):
    """``{META_SET_ID: .., META_INSTANCE_ID: ..}`` or ``None`` if not ours."""
    m = _GROUP_DESC_RE.match(text or "")
    if not m:
        return None
    return {META_SET_ID: m["set"], META_INSTANCE_ID: m["instance"]}


def parse_member_name(name) -> Optional[MemberName]:
    """Parse a member name back; ``None`` if it is not one of ours."""
    m = _MEMBER_RE.match(name or "")
    if not m:
        return None
    return MemberName(m["instance"], m["set"], _TAG_ROLE[m["role"]], m["device"])


def sanitize_set_name(name, limit=MAX_SET_NAME_LEN):
    """Make a user-given ``--name`` safe to store and to show.

    Unicode is kept (NFC-normalised); control and format characters are
    dropped, whitespace runs become one space, and the result is cut to
    ``limit`` characters.  Returns ``None`` when nothing printable is left.
    """
    if name is None:
        return None
    text = unicodedata.normalize("NFC", str(name))
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch)[0] != "C")
    text = re.sub(r" +", " ", text).strip()[:limit].strip()
    return text or None


def default_set_name(instance_name, when):
    """The name a set gets when the user gives none: ``<instance>-<UTC stamp>``."""
    return sanitize_set_name(f"{instance_name}-{when.strftime('%Y%m%dT%H%M%SZ')}")


def member_metadata(set_id, instance_id, role, device, schema_version, set_name=None,
                    catalog_id=None, labels=None):
    """Metadata stored on a member (all values are strings, <= 255 chars)."""
    meta = {
        META_SET_ID: str(set_id),
        META_INSTANCE_ID: str(instance_id),
        META_ROLE: role,
        META_DEVICE: sanitize_device(device),
        META_SCHEMA_VERSION: str(schema_version),
    }
    if set_name:
        meta[META_SET_NAME] = utf8mb3_safe(set_name)
    if catalog_id:
        meta[META_CATALOG_ID] = str(catalog_id)
    for key, value in sorted((labels or {}).items()):
        meta[META_LABEL_PREFIX + key] = utf8mb3_safe(value)
    return meta


def utf8mb3_safe(text, limit=MAX_NAME_LEN):
    """``text`` as a Cinder or Glance field can hold it on MySQL/MariaDB.

    Their tables are utf8mb3 (what their own db sync creates), which refuses
    4-byte UTF-8, so a create with an emoji in its metadata gets HTTP 500.
    Each character outside the Basic Multilingual Plane is written as its
    Python escape (``\\U0001f600``); the result is cut to ``limit`` characters,
    never inside an escape.  The manifest keeps the full name.
    """
    out, n = [], 0
    for ch in text:
        piece = ch if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
        if n + len(piece) > limit:
            break
        out.append(piece)
        n += len(piece)
    return "".join(out)


def new_set_id(instance_id=None, idempotency_key=None):
    """A fresh set id, or a stable one derived from an idempotency key."""
    if idempotency_key:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cgsnap:{instance_id}:{idempotency_key}"))
    return str(uuid.uuid4())
