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
