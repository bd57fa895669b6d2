"""Tasks that touch the image service (Glance): an image-backed root disk.

The root is cut inside the freeze window like a local disk (see
:mod:`.local`); after the thaw its copy is uploaded here, so the upload never
holds the guest frozen.
"""

import os

from oslo_log import log as logging

from cgsnap import catalog, exception, naming, plan, state
from cgsnap import drivers as drivers_mod
from cgsnap import manifest as manifest_mod
from cgsnap.tasks.base import CgsnapTask

LOG = logging.getLogger(__name__)


def image_members(manifest):
    return [m for m in manifest["members"] if m["kind"] == manifest_mod.KIND_GLANCE_IMAGE]


def delete_set_images(images, set_id):
    """Delete every image tagged with this set's id (reverts, delete, recover)."""
    for img in images.list_images(set_id):
        images.delete_image(img["id"])


class CheckImageStore(CgsnapTask):
    """Before the freeze: Glance answers with our credentials."""

    def execute(self, manifest):
        self.fault_point()
        if image_members(manifest):
            try:
                self.drivers.images.ping()
            except exception.ConfigError as e:
                raise exception.ConfigError(
                    f"{e} (the root disk has no Cinder volume serial, so it is uploaded to "
                    "Glance; '[snapshot] local_disks = qcow2' keeps a local copy instead)"
                ) from None


class CleanupImages(CgsnapTask):
    """Revert-only: delete every Glance image tagged with this set's id."""

    def execute(self, set_id, manifest):
        self.fault_point()

    def revert(self, set_id, manifest, **kwargs):
        if not image_members(manifest):
            return
        try:
            delete_set_images(self.drivers.images, set_id)
        except Exception as e:  # log and swallow; the caller verifies nothing is left
            LOG.error("revert: could not delete the images of set %s: %s", set_id, e)


class UploadRootImage(CgsnapTask):
    """After the thaw: upload the root's copy to Glance with the set's
    metadata, then drop the local copy.  Safe to run twice: an image already
    uploaded under the member's name is reused."""

    default_provides = "root_images"

    def execute(self, set_id, manifest, local_copies):
        self.fault_point()
        out = {}
        for m in image_members(manifest):
            existing = [i for i in self.drivers.images.list_images(set_id)
                        if i["name"] == m["name"] and i["status"] == "active"]
            if existing:
                img = existing[0]
            else:
                meta = naming.member_metadata(
                    set_id, manifest["instance_id"], m["role"], m["device"],
                    manifest_mod.SCHEMA_VERSION, manifest["name"],
                    catalog_id=catalog.Catalog(state.catalog_url()).catalog_id,
                    labels=manifest.get("labels"))
                img = self.drivers.images.upload_image(m["name"], local_copies[m["device"]]["path"],
                                                       meta)
            try:
                os.remove(local_copies[m["device"]]["path"])
            except FileNotFoundError:
                pass
            out[m["device"]] = {"id": img["id"], "status": img["status"], "size": img["size"]}
        return out


class DeleteImages(CgsnapTask):
    """Delete flow: remove the set's Glance images."""

    def execute(self, set_id, manifest):
        self.fault_point()
        members = image_members(manifest)
        if not members:
            return
        why = drivers_mod.unavailable("images", self.drivers)
        if why and plan.never_created_in(manifest, members):
            LOG.info("set %s: Glance not asked (%s); the set never uploaded an image",
                     set_id, why)
            return
        delete_set_images(self.drivers.images, set_id)
