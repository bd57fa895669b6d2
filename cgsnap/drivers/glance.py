"""Glance image backend (python-glanceclient v2 on a keystoneauth session):
where an image-backed root disk is uploaded after the thaw."""

from glanceclient import client as glance_client
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc

from cgsnap import exception, faults, naming
from cgsnap.drivers.cinder import _session_from_config


def _translate(err, what):
    if isinstance(err, (glance_exc.HTTPNotFound, glance_exc.NotFound)):
        return exception.NotFound(f"{what}: not found")
    if isinstance(err, (ks_exc.Unauthorized, glance_exc.HTTPUnauthorized)):
        return exception.ConfigError(f"{what}: authentication failed")
    if isinstance(err, (ks_exc.ConnectFailure, ks_exc.ConnectTimeout,
                        ks_exc.EndpointNotFound, glance_exc.CommunicationError)):
        return exception.ConfigError(f"{what}: cannot reach Glance: {err}")
    if isinstance(err, glance_exc.HTTPOverLimit):
        return exception.SnapshotFailed(f"{what}: Glance quota exceeded")
    return exception.SnapshotFailed(f"{what}: {str(err).splitlines()[0] if str(err) else err!r}")


_ERRORS = (glance_exc.BaseException, glance_exc.HTTPException, ks_exc.ClientException)


def _image_dict(img):
    return {"id": img["id"], "name": img.get("name"), "status": img.get("status"),
            "size": img.get("size"), "created_at": img.get("created_at"),
            "metadata": {k: v for k, v in img.items() if k.startswith("cgsnap_")}}


class GlanceBackend:
    def __init__(self, session, region_name=None, interface=None):
        self.client = glance_client.Client("2", session=session, region_name=region_name,
                                           interface=interface or "public")

    def close(self):
        """Close the kept-alive HTTP connections."""
        try:
            self.client.http_client.session.session.close()
        except Exception:  # noqa: BLE001 - best effort
            pass

    @classmethod
    def from_config(cls, conf):
        session, region = _session_from_config(conf)
        return cls(session, region_name=region.region_name, interface=region.interface)

    def ping(self):
        """A cheap authenticated call, for the pre-checks."""
        try:
            list(self.client.images.list(limit=1))
        except _ERRORS as e:
            raise _translate(e, "Glance") from None

    def upload_image(self, name, path, metadata, disk_format="qcow2"):
        """Create an image carrying ``metadata`` and upload ``path`` into it."""
        faults.point("image.create")
        try:
            img = self.client.images.create(name=name, disk_format=disk_format,
                                            container_format="bare", **metadata)
            faults.point("image.upload")
            with open(path, "rb") as f:
                self.client.images.upload(img["id"], f)
            return _image_dict(self.client.images.get(img["id"]))
        except _ERRORS as e:
            raise _translate(e, f"upload of {name}") from None

    def list_images(self, set_id):
        try:
            found = self.client.images.list(filters={naming.META_SET_ID: set_id})
            return [_image_dict(i) for i in found if i.get(naming.META_SET_ID) == set_id]
        except _ERRORS as e:
            raise _translate(e, "list images") from None

    def list_all_cgsnap_images(self):
        try:
            return [_image_dict(i) for i in self.client.images.list()
                    if naming.META_SET_ID in i]
        except _ERRORS as e:
            raise _translate(e, "list images") from None

    def delete_image(self, image_id):
        faults.point("image.delete")
        try:
            self.client.images.delete(image_id)
        except (glance_exc.HTTPNotFound, glance_exc.NotFound):
            return
        except _ERRORS as e:
            raise _translate(e, f"delete image {image_id}") from None
