"""Sealed templates kept with enrollments (cloud/store_sealed.py via GalleryStore.sealed), on each backend."""

from __future__ import annotations

import pytest

from blindgate.cloud.store import GalleryStore, UnknownSite, UnknownSubject
from blindgate.shared.engine.gallery import SlotRef


def test_sealed_blob_is_stored_with_the_enrollment_and_goes_with_it(store_url):
    with GalleryStore(store_url) as store:
        store.create_site("home", "token", "k" * 32, b"bundle")
        store.commit_enrollment("home", "s1", b"l", SlotRef(0, 0), b"e1", 0, b"block v1", sealed=b"\x00sealed-1")
        store.commit_enrollment("home", "s2", b"l", SlotRef(0, 1), b"e2", 0, b"block v2")  # an older device: none
        assert store.sealed("home", "s1") == b"\x00sealed-1"
        assert store.sealed("home", "s2") == b""
        with pytest.raises(UnknownSubject):
            store.sealed("home", "s3")
        with pytest.raises(UnknownSite):
            store.sealed("nowhere", "s1")
        with pytest.raises(ValueError):
            store.commit_enrollment("home", "s4", b"l", SlotRef(0, 2), b"e", 0, b"b", sealed="text")  # type: ignore[arg-type]
        store.commit_removal("home", "s1", 0, b"block v3")
        with pytest.raises(UnknownSubject):
            store.sealed("home", "s1")
    with GalleryStore(store_url, readonly=True) as again:
        assert again.sealed("home", "s2") == b""
