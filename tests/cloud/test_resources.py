"""The service's resources (cloud/resources.py): signing key, state startup, the per-process site cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindgate.cloud.resources import (
    SIGNING_KEY,
    SIGNING_KEY_NAME,
    SITES,
    STORE,
    SUBJECT_COUNTS,
    init_state,
    load_or_create_signing_key,
    lookup_site,
    state_ctx,
)
from blindgate.cloud.store import GalleryStore, StoreError
from blindgate.shared.engine.gallery import SlotRef
from blindgate.shared.protocol import public_key_to_text

from .conftest import cloud_config


def public(key: Ed25519PrivateKey) -> str:
    return public_key_to_text(key.public_key())


def test_signing_key_is_created_once_private_and_kept(tmp_path: Path) -> None:
    first = load_or_create_signing_key(tmp_path)
    assert (tmp_path / SIGNING_KEY_NAME).stat().st_mode & 0o777 == 0o600
    assert public(load_or_create_signing_key(tmp_path)) == public(first)


@pytest.mark.asyncio
async def test_state_ctx_loads_every_site_then_closes_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with GalleryStore(state / "gallery.db") as store:
        store.create_site("home", "token", "key-1", b"bundle")
        store.commit_enrollment("home", "s1", b"l", SlotRef(0, 0), b"e", 0, b"block")
        store.create_site("office", "token-2", "key-2", b"bundle")
    app = web.Application()
    init_state(app, cloud_config(state))
    ctx = state_ctx(app)
    await anext(ctx)
    sites = app[SITES]
    assert set(sites) == {"home", "office"} and sites["home"].version == 1
    assert app[SUBJECT_COUNTS] == {"home": 1, "office": 0}
    assert public(app[SIGNING_KEY]) == public(load_or_create_signing_key(state))
    store = app[STORE]
    await anext(ctx, None)
    with pytest.raises(StoreError, match="closed"):
        store.sites()


@pytest.mark.asyncio
async def test_lookup_site_caches_and_rereads_new_sites(tmp_path: Path) -> None:
    app = web.Application()
    init_state(app, cloud_config(tmp_path))
    ctx = state_ctx(app)
    await anext(ctx)
    try:
        assert await lookup_site(app, "home") is None
        app[STORE].create_site("home", "token", "key-1", b"bundle")  # e.g. by another service process
        record = await lookup_site(app, "home")
        assert record is not None and record.key_id == "key-1" and app[SITES]["home"] == record
    finally:
        await anext(ctx, None)
