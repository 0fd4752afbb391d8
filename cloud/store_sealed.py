"""Sealed templates in the gallery store: the device's proof of each enrollment, kept but never read.

The device seals each template (and name) under a site key the cloud never holds
(device/sealing.py) and stores the blob with the enrollment (column `subject.sealed`, schema 2,
written by `GalleryStore.commit_enrollment`). The cloud hands it back unchanged on request so the
device can recheck a claimed match in plaintext; to the cloud it is opaque bytes.
"""

from __future__ import annotations

from .store_schema import StoreDatabase, UnknownSite, UnknownSubject


def sealed_template(database: StoreDatabase, site_id: str, subject_id: str) -> bytes:
    """The blob stored with `subject_id`'s enrollment (empty for one enrolled without it)."""
    with database.read() as db:
        if db.execute("SELECT 1 FROM site WHERE site_id = ?", (site_id,)).fetchone() is None:
            raise UnknownSite(f"no site {site_id!r} is registered")
        row = db.execute("SELECT sealed FROM subject WHERE site_id = ? AND subject_id = ?", (site_id, subject_id)).fetchone()
    if row is None:
        raise UnknownSubject(f"site {site_id!r} has no subject {subject_id!r}")
    return bytes(row[0])


__all__ = ["sealed_template"]
