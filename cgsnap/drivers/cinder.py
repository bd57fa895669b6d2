"""Cinder volume backend, through python-cinderclient on a keystoneauth session.

Credentials come from clouds.yaml / ``OS_*`` variables the way the
``openstack`` CLI reads them (``[openstack]`` options).  keystoneauth
re-authenticates by itself when a token expires mid-flow.
"""

import json
import os

from cinderclient import api_versions
from cinderclient import exceptions as cinder_exc
from cinderclient.v3 import client as cinder_client
from keystoneauth1 import exceptions as ks_exc
from oslo_log import log as logging

from cgsnap import exception, faults, naming
from cgsnap.drivers import base

LOG = logging.getLogger(__name__)

GROUP_SNAPSHOTS_MIN_VERSION = "3.14"
CONSISTENT_SPEC = "consistent_group_snapshot_enabled"


def _session_from_config(conf):
    """A keystoneauth session for the configured cloud (clouds.yaml or OS_*)."""
    import openstack.config  # imported lazily: it is the slowest import we have
    from openstack import exceptions as sdk_exc

    os_conf = conf.openstack
    files = []
    if os_conf.clouds_yaml:
        path = os.path.expanduser(os_conf.clouds_yaml)
        if not os.path.isfile(path):
            raise exception.ConfigError(f"clouds.yaml not found: {path}")
        files.append(path)
    try:
        loader = openstack.config.OpenStackConfig(config_files=files or None)
        region = loader.get_one(cloud=os_conf.cloud or os.environ.get("OS_CLOUD"),
                                region_name=os_conf.region_name)
        session = region.get_session()
    except (sdk_exc.ConfigException, ks_exc.ClientException) as e:
        raise exception.ConfigError(f"OpenStack credentials: {e}") from None
    session.timeout = os_conf.api_timeout
    return session, region


def size_connection_pool(session, size):
    """Let ``size`` requests share kept-alive connections per host: requests'
    default pool keeps 10, so with more parallel creates every run logged
    ``Connection pool is full, discarding connection`` and reconnected.
    Replaces each mounted adapter with one of the same kind (keystoneauth's
    TCP keep-alive adapter keeps its TLS settings) and a pool of ``size``."""
    import requests.adapters

    http = getattr(session, "session", session)  # keystoneauth Session -> requests.Session
    for prefix, adapter in list(http.adapters.items()):
        if not isinstance(adapter, requests.adapters.HTTPAdapter):
            continue
        if getattr(adapter, "_pool_maxsize", 0) >= size:
            continue
        extra = {k: getattr(adapter, k) for k in ("tls_ciphers", "tls_min_version")
                 if hasattr(adapter, k)}
        http.mount(prefix, type(adapter)(pool_connections=adapter._pool_connections,
                                         pool_maxsize=size, max_retries=adapter.max_retries,
                                         pool_block=adapter._pool_block, **extra))
        adapter.close()


def _translate(err, what):
    """Map client exceptions to cgsnap's one-line errors."""
    if isinstance(err, cinder_exc.NotFound):
        return exception.NotFound(f"{what}: not found")
    if isinstance(err, cinder_exc.OverLimit):
        return exception.SnapshotFailed(f"{what}: Cinder quota exceeded ({_msg(err)})")
    if isinstance(err, (ks_exc.Unauthorized, cinder_exc.Unauthorized)):
        return exception.ConfigError(f"{what}: authentication failed: {_msg(err)}")
    if isinstance(err, (ks_exc.ConnectFailure, ks_exc.ConnectTimeout,
                        ks_exc.EndpointNotFound, ks_exc.DiscoveryFailure)):
        return exception.ConfigError(f"{what}: cannot reach Cinder: {_msg(err)}")
    if isinstance(err, ks_exc.ClientException):
        return exception.SnapshotFailed(f"{what}: {_msg(err)}")
    if isinstance(err, cinder_exc.ClientException):
        return exception.SnapshotFailed(f"{what}: Cinder said {err.code}: {_msg(err)}")
    return None


def _msg(err):
    text = getattr(err, "message", None) or str(err)
    return str(text).splitlines()[0] if text else type(err).__name__


def _call(what, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (cinder_exc.ClientException, ks_exc.ClientException) as e:
        raise _translate(e, what) from None


def _volume_dict(v):
    return {
        "id": v.id, "name": v.name, "status": v.status, "size_gb": v.size,
        "attached_to": [a.get("server_id") for a in (v.attachments or [])],
        "group_id": v._info.get("group_id"),
        "volume_type": v._info.get("volume_type"),
    }


def _delete(what, manager, resource_id):
    """Start a delete; a resource that is already gone is not an error."""
    try:
        manager.delete(resource_id)
    except cinder_exc.NotFound:
        return
    except (cinder_exc.ClientException, ks_exc.ClientException) as e:
        raise _translate(e, what) from None


_QUOTA_KINDS = ("snapshots", "gigabytes")


def _quota_view(detail):
    """:meth:`CinderBackend.get_limits` from ``GET /os-quota-sets/{project}?usage=True``:
    ``{kind}_max``/``{kind}_used`` project-wide, and ``types``: the same per
    volume type (keys ``snapshots_<type>``, ``gigabytes_<type>``).  Reserved
    counts as used."""
    def pair(entry):
        if not isinstance(entry, dict):
            return -1, 0
        return entry.get("limit", -1), entry.get("in_use", 0) + entry.get("reserved", 0)

    view, types = {}, {}
    for kind in _QUOTA_KINDS:
        view[f"{kind}_max"], view[f"{kind}_used"] = pair(detail.get(kind))
        for key, entry in detail.items():
            if key.startswith(kind + "_"):
                t = types.setdefault(key[len(kind) + 1:], {})
                t[f"{kind}_max"], t[f"{kind}_used"] = pair(entry)
    view["types"] = types
    return view


def _snapshot_dict(s):
    return {
        "id": s.id, "name": s.name, "status": s.status, "volume_id": s.volume_id,
        "size_gb": s.size, "metadata": dict(s._info.get("metadata") or {}),
        "created_at": s._info.get("created_at"),
        "group_snapshot_id": s._info.get("group_snapshot_id"),
    }


def _group_snapshot_dict(gs, **defaults):
    # Optional fields are read from the response body (``_info``) throughout
    # this module: a missing attribute on a cinderclient resource that is not
    # "loaded" triggers a lazy GET (the create response has only id and name).
    info = dict(defaults, **{k: v for k, v in gs._info.items() if v is not None})
    return {
        "id": info["id"], "name": info.get("name"), "status": info.get("status"),
        "group_id": info.get("group_id"), "created_at": info.get("created_at"),
        "metadata": naming.parse_group_snapshot_description(info.get("description")) or {},
    }


class CinderBackend(base.VolumeBackend):
    """:class:`cgsnap.drivers.base.VolumeBackend` on Cinder v3."""

    def __init__(self, session, api_version="3.71", region_name=None, interface=None,
                 pool_size=None):
        self.client = cinder_client.Client(
            session=session, api_version=api_versions.APIVersion(api_version),
            region_name=region_name, interface=interface or "public")
        if pool_size:
            size_connection_pool(session, pool_size)
        self._volume_filters = None  # see filters_volumes_by_id()
        self._quota_detail = True    # see get_limits(): False once Cinder refused it
        self._types = {}             # volume id -> volume type name, see volume_types()
        faults.on_unreachable(self._break_endpoint)

    def _break_endpoint(self):
        """Fault injection: send every later request to a closed port."""
        self.client.client.endpoint_override = "http://127.0.0.1:9/v3"

    def close(self):
        """Close the kept-alive HTTP connections."""
        try:
            self.client.client.session.session.close()
        except Exception:  # noqa: BLE001 - best effort
            pass

    def endpoint_key(self):
        """The Cinder endpoint this backend talks to (the adaptive create
        concurrency is remembered per endpoint)."""
        try:
            return self.client.client.get_endpoint() or "cinder"
        except Exception:  # noqa: BLE001 - only the key of a cache
            return "cinder"

    @classmethod
    def from_config(cls, conf):
        session, region = _session_from_config(conf)
        return cls(session, conf.openstack.volume_api_version,
                   region_name=region.region_name, interface=region.interface,
                   pool_size=conf.snapshot.max_parallel_creates)

    def get_volume(self, volume_id):
        faults.point("volume.get_volume")
        return _volume_dict(_call(f"volume {volume_id}", self.client.volumes.get, volume_id))

    def get_volumes(self, volume_ids):
        """``{id: volume}`` for the ``volume_ids`` that exist, in as few calls
        as this Cinder allows:

        * one list call filtered by ``id`` when the deployment enables that
          volume filter (``id`` in Cinder's resource_filters.json; see
          :meth:`filters_volumes_by_id`);
        * otherwise one GET for the first volume and, if it is in a group, one
          list call by ``group_id`` (a default filter) for the rest of the
          group, and GETs for whatever that did not return.

        A volume that is in no answer is missing from the result.
        """
        wanted = list(dict.fromkeys(volume_ids))
        if len(wanted) > 1 and self.filters_volumes_by_id():
            faults.point("volume.get_volume")
            # Cinder evaluates the value as a Python literal: a list means "id IN".
            found = _call("list volumes", self.client.volumes.list,
                          search_opts={"id": repr(wanted)})
            # Re-filtered client-side: a server that ignored the filter returns more.
            out = {v.id: _volume_dict(v) for v in found if v.id in wanted}
            # A list is scoped to the user's project, a GET is not (an admin
            # may snapshot a tenant's instance): GET whatever the list missed.
            return self._get_one_by_one([v for v in wanted if v not in out], out)
        return self._get_one_by_one(wanted, {})

    def _get_one_by_one(self, wanted, out):
        for vid in wanted:
            if vid in out:
                continue
            try:
                out[vid] = self.get_volume(vid)
            except exception.NotFound:
                continue
            gid = out[vid]["group_id"]
            if gid and len(wanted) > 2:
                faults.point("volume.get_volume")
                found = _call(f"volumes of group {gid}", self.client.volumes.list,
                              search_opts={"group_id": gid})
                out.update((v.id, _volume_dict(v)) for v in found
                           if v.id in wanted and v._info.get("group_id") == gid)
        self._types.update((vid, v["volume_type"]) for vid, v in out.items())
        return out

    def volume_types(self, volume_ids):
        """``{id: volume type name}``: from this backend's last answer about
        each volume (the pre-check's get_volumes), asking Cinder only for the rest."""
        missing = [v for v in volume_ids if v not in self._types]
        if missing:
            self.get_volumes(missing)
        return {v: self._types.get(v) for v in volume_ids}

    def filters_volumes_by_id(self):
        """Whether this Cinder lets this user list volumes filtered by ``id``
        (not among Cinder's default volume filters; an operator enables it in
        resource_filters.json).  Asked once per backend object (microversion
        3.33's resource-filters call); any failure counts as "no"."""
        if self._volume_filters is None:
            try:
                listed = self.client.resource_filters.list(resource="volume")
                self._volume_filters = {f for r in listed for f in (r.filters or [])}
            except Exception as e:  # noqa: BLE001 - only an optimisation is lost
                LOG.debug("resource filters unavailable (%s): volumes are fetched one by one", e)
                self._volume_filters = set()
        return "id" in self._volume_filters

    def get_limits(self):
        """Project-wide limits, and per volume type (``types``) from the
        quota-set detail where this user may read it (Cinder's default policy
        lets a project reader read its own); else the limits call, which has
        no per-type figures."""
        faults.point("volume.get_limits")
        if self._quota_detail:
            try:
                return _quota_view(self.client.quotas.get(self.client.client.get_project_id(),
                                                          usage=True)._info)
            except (cinder_exc.Forbidden, cinder_exc.NotFound) as e:
                LOG.info("quota-set detail not readable (%s): no per-type quota check", e)
                self._quota_detail = False
            except (cinder_exc.ClientException, ks_exc.ClientException) as e:
                raise _translate(e, "Cinder quota-set detail") from None
        limits = _call("Cinder limits", self.client.limits.get)
        absolute = {a.name: a.value for a in limits.absolute}
        return {
            "snapshots_max": absolute.get("maxTotalSnapshots", -1),
            "snapshots_used": absolute.get("totalSnapshotsUsed", 0),
            "gigabytes_max": absolute.get("maxTotalVolumeGigabytes", -1),
            "gigabytes_used": absolute.get("totalGigabytesUsed", 0),
        }

    def create_snapshot(self, volume_id, name, metadata):
        faults.point("volume.create_snapshot")
        s = _call(f"snapshot of volume {volume_id}", self.client.volume_snapshots.create,
                  volume_id, name=name, metadata=metadata,
                  description=f"cgsnap member of set {metadata.get(naming.META_SET_ID)}")
        faults.point("volume.create_snapshot.after")
        return _snapshot_dict(s)

    def list_snapshots(self, set_id):
        faults.point("volume.list_snapshots")
        found = _call("list snapshots", self.client.volume_snapshots.list, search_opts={
            "metadata": json.dumps({naming.META_SET_ID: set_id})})
        # Filter again client-side: never act on a snapshot that is not ours,
        # even if the server ignored the filter.
        return [_snapshot_dict(s) for s in found
                if (s.metadata or {}).get(naming.META_SET_ID) == set_id]

    def list_all_cgsnap_snapshots(self):
        found = _call("list snapshots", self.client.volume_snapshots.list)
        return [_snapshot_dict(s) for s in found if naming.META_SET_ID in (s.metadata or {})]

    def volumes_by_source_snapshot(self):
        """``{snapshot id: [ids of volumes created from it]}`` (they block its
        deletion).  Filtered client-side: Cinder's default resource filters do
        not allow ``snapshot_id`` on volume lists."""
        out = {}
        for v in _call("list volumes", self.client.volumes.list):
            if getattr(v, "snapshot_id", None):
                out.setdefault(v.snapshot_id, []).append(v.id)
        return out

    # -- group snapshots --------------------------------------------------------------
    def supports_groups(self):
        return self.client.api_version >= api_versions.APIVersion(GROUP_SNAPSHOTS_MIN_VERSION)

    def get_group(self, group_id):
        faults.point("volume.get_group")
        g = _call(f"group {group_id}", self.client.groups.get, group_id, list_volume=True)
        gtype = _call(f"group type {g.group_type}", self.client.group_types.get, g.group_type)
        # Cinder shows group specs to admins only (policy group:access_group_types_specs).
        specs = gtype._info.get("group_specs")
        consistent = None if specs is None else specs.get(CONSISTENT_SPEC) == "<is> True"
        return {
            "id": g.id, "status": g.status, "group_type_id": gtype.id,
            "group_type_name": gtype.name, "consistent": consistent,
            "volume_ids": [v if isinstance(v, str) else v["id"]
                           for v in (g._info.get("volumes") or [])],
        }

    def create_group_snapshot(self, group_id, name, description):
        faults.point("volume.create_group_snapshot")
        gs = _call(f"group snapshot of group {group_id}", self.client.group_snapshots.create,
                   group_id, name=name, description=description)
        faults.point("volume.create_group_snapshot.after")
        return _group_snapshot_dict(gs, status="creating", group_id=group_id, name=name,
                                    description=description)

    def get_group_snapshot(self, group_snapshot_id):
        faults.point("volume.get_group_snapshot")
        return _group_snapshot_dict(_call(f"group snapshot {group_snapshot_id}",
                                          self.client.group_snapshots.get, group_snapshot_id))

    def list_group_snapshots(self, set_id=None):
        faults.point("volume.list_group_snapshots")
        found = _call("list group snapshots", self.client.group_snapshots.list)
        out = [_group_snapshot_dict(gs) for gs in found]
        return [gs for gs in out if gs["metadata"]
                and (set_id is None or gs["metadata"][naming.META_SET_ID] == set_id)]

    def list_group_snapshot_members(self, group_snapshot, set_id):
        # Untagged members carry the group snapshot's name, tagged ones the set's
        # metadata: two lists on default Cinder resource filters (a
        # group_snapshot_id filter is not one), checked client-side.
        untagged = _call("list snapshots", self.client.volume_snapshots.list,
                         search_opts={"name": group_snapshot["name"]})
        tagged = _call("list snapshots", self.client.volume_snapshots.list, search_opts={
            "metadata": json.dumps({naming.META_SET_ID: set_id})})
        by_id = {s.id: s for s in list(untagged) + list(tagged)
                 if s._info.get("group_snapshot_id") == group_snapshot["id"]}
        return [_snapshot_dict(s) for s in by_id.values()]

    def tag_snapshot(self, snapshot_id, name, metadata):
        faults.point("volume.tag_snapshot")
        # Metadata first: from then on the set's metadata list finds it.
        _call(f"snapshot {snapshot_id}", self.client.volume_snapshots.set_metadata,
              snapshot_id, metadata)
        _call(f"snapshot {snapshot_id}", self.client.volume_snapshots.update, snapshot_id,
              name=name)

    def delete_group_snapshot(self, group_snapshot_id):
        faults.point("volume.delete_group_snapshot")
        _delete(f"delete group snapshot {group_snapshot_id}", self.client.group_snapshots,
                group_snapshot_id)

    def delete_snapshot(self, snapshot_id):
        faults.point("volume.delete_snapshot")
        _delete(f"delete snapshot {snapshot_id}", self.client.volume_snapshots, snapshot_id)
