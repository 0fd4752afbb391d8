"""key_rotation.py: the next reply-signing key, its endorsement, activation, and GET /v1/cloud-key."""

from __future__ import annotations

import os
import stat

import pytest

from blindgate.cloud.app import create_app, load_or_create_signing_key
from blindgate.cloud.key_rotation import NEXT_KEY_NAME, RotationError, activate, published, rotate
from blindgate.shared.protocol import public_key_to_text
from blindgate.shared.protocol.cloud_keys import Endorsement, KeyRing, check_endorsement

from .conftest import cloud_config


def test_rotate_then_activate(tmp_path):
    current = load_or_create_signing_key(tmp_path)
    old = public_key_to_text(current.public_key())
    assert published(tmp_path, current) == {"cloud_public_key": old}
    with pytest.raises(RotationError, match="rotate-signing-key"):
        activate(tmp_path)
    endorsement = rotate(tmp_path, current)
    assert rotate(tmp_path, current) == endorsement  # a pending rotation is kept, not replaced
    assert stat.S_IMODE(os.stat(tmp_path / NEXT_KEY_NAME).st_mode) == 0o600
    answer = published(tmp_path, current)
    assert answer["cloud_public_key"] == old
    new = check_endorsement(Endorsement.from_dict(answer["endorsement"]), KeyRing([old]))
    assert activate(tmp_path) == new
    rotated = load_or_create_signing_key(tmp_path)
    assert public_key_to_text(rotated.public_key()) == new
    # still published after the switch, so late devices can follow
    assert published(tmp_path, rotated) == {"cloud_public_key": new, "endorsement": answer["endorsement"]}
    assert not (tmp_path / NEXT_KEY_NAME).exists()


@pytest.mark.asyncio
async def test_cloud_key_route_serves_the_endorsement(aiohttp_client, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    client = await aiohttp_client(create_app(cloud_config(state), mqtt=False))
    plain = await (await client.get("/v1/cloud-key")).json()
    assert set(plain) == {"cloud_public_key"}
    rotate(state, load_or_create_signing_key(state))
    answer = await (await client.get("/v1/cloud-key")).json()
    assert answer["cloud_public_key"] == plain["cloud_public_key"]
    assert answer["endorsement"]["from"] == plain["cloud_public_key"]


def test_rotation_in_a_shared_store_is_seen_by_every_replica(pg_url, tmp_path):
    """With PostgreSQL the keys live in the database: a rotation done through one store is published by all."""
    from blindgate.cloud.resources import load_signing_key
    from blindgate.cloud.store import GalleryStore
    from blindgate.cloud.store_settings import CloudSettings, FileSecrets

    legacy = tmp_path / "single-host"
    legacy.mkdir()
    pinned = public_key_to_text(load_or_create_signing_key(legacy).public_key())  # doors pinned this one
    with GalleryStore(pg_url) as one, GalleryStore(pg_url) as two:
        here, there = CloudSettings(one.database), CloudSettings(two.database)
        current = load_signing_key(here, FileSecrets(legacy))
        assert public_key_to_text(current.public_key()) == pinned  # copied in, not replaced
        assert public_key_to_text(load_signing_key(there).public_key()) == pinned
        endorsement = rotate(here, current)
        assert rotate(there, load_signing_key(there)) == endorsement  # one pending rotation, cloud-wide
        assert published(there, current)["endorsement"] == endorsement.to_dict()
        assert activate(there) == endorsement.endorsed
        assert public_key_to_text(load_signing_key(here).public_key()) == endorsement.endorsed
        with pytest.raises(RotationError):
            activate(here)
