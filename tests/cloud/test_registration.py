"""registration.py and the registration route: closed by default, strict bundles, site and rate caps.

Every refusal has its positive control next to it: the same cloud, the honest request, 201.
"""

from __future__ import annotations

import json
import re
import stat
import struct

import pytest
import pytest_asyncio

from blindgate.cloud.app import create_app
from blindgate.cloud.registration import PROVISION_TOKEN_NAME, RegistrationGate, load_or_create_provision_token
from blindgate.cloud.resources import STORE
from blindgate.shared.launch import PROVISION_TOKEN_FILE
from tests.cloud.conftest import cloud_config


def closed(state, **overrides):
    """A cloud as shipped: no provision_token configured and open_registration left at its default (false)."""
    return create_app(cloud_config(state, open_registration=False, **overrides), mqtt=False)


def split(bundle: bytes) -> tuple[bytes, dict, dict[str, bytes]]:
    (head_len,) = struct.unpack_from("<I", bundle, 5)
    header = json.loads(bundle[9 : 9 + head_len])
    sections, offset = {}, 9 + head_len
    for name, size in header["sections"]:
        sections[name], offset = bundle[offset : offset + size], offset + size
    return bundle[4:5], header, sections


def join(kind: bytes, header: dict, sections: dict[str, bytes]) -> bytes:
    head = json.dumps(dict(header, sections=[[n, len(b)] for n, b in sections.items()])).encode()  # ", " separators
    return b"BGK1" + kind + struct.pack("<I", len(head)) + head + b"".join(sections.values())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(closed(tmp_path / "state"))


def generated_token(tmp_path) -> str:
    return (tmp_path / "state" / PROVISION_TOKEN_NAME).read_text().strip()


@pytest.mark.asyncio
async def test_a_default_cloud_refuses_registration_without_its_generated_token(client, tmp_path, site_keys):
    resp = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert PROVISION_TOKEN_NAME in (await resp.json())["error"]
    wrong = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes, headers=bearer("guess"))
    assert wrong.status == 401
    assert client.app[STORE].sites() == []
    ok = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes, headers=bearer(generated_token(tmp_path)))
    assert ok.status == 201, await ok.text()  # positive control


@pytest.mark.asyncio
async def test_the_token_file_is_private_and_reused_across_restarts(aiohttp_client, tmp_path, site_keys, other_keys):
    assert PROVISION_TOKEN_FILE == PROVISION_TOKEN_NAME  # launch.py reads what the cloud writes
    first = await aiohttp_client(closed(tmp_path / "state"))
    path = tmp_path / "state" / PROVISION_TOKEN_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = generated_token(tmp_path)
    assert len(token) >= 40
    assert (await first.post("/v1/sites/a", data=site_keys.evaluation_bytes, headers=bearer(token))).status == 201
    await first.close()
    again = await aiohttp_client(closed(tmp_path / "state"))
    assert generated_token(tmp_path) == token
    assert (await again.post("/v1/sites/b", data=other_keys.evaluation_bytes, headers=bearer(token))).status == 201


@pytest.mark.asyncio
async def test_open_registration_is_an_explicit_opt_in(aiohttp_client, tmp_path, site_keys):
    app = create_app(cloud_config(tmp_path / "state", open_registration=True), mqtt=False)
    client = await aiohttp_client(app)
    assert (await client.post("/v1/sites/home", data=site_keys.evaluation_bytes)).status == 201
    assert not (tmp_path / "state" / PROVISION_TOKEN_NAME).exists()


@pytest.mark.asyncio
async def test_a_configured_token_wins_and_no_file_is_created(aiohttp_client, tmp_path, site_keys):
    client = await aiohttp_client(closed(tmp_path / "state", provision_token="configured"))
    assert (await client.post("/v1/sites/home", data=site_keys.evaluation_bytes)).status == 401
    assert (await client.post("/v1/sites/home", data=site_keys.evaluation_bytes, headers=bearer("configured"))).status == 201
    assert not (tmp_path / "state" / PROVISION_TOKEN_NAME).exists()


def test_an_empty_token_file_is_an_error_not_open_registration(tmp_path):
    (tmp_path / PROVISION_TOKEN_NAME).write_text("\n")
    with pytest.raises(RuntimeError, match="is empty"):
        load_or_create_provision_token(tmp_path)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda k, h, s: join(k, h, dict(s, pad=b"\0" * 500_000)),
        lambda k, h, s: join(k, dict(h, pad="x" * 30_000), s),
        lambda k, h, s: join(k, h, s) + b"\0" * 500_000,
    ],
    ids=["unknown_section", "unknown_header_field", "trailing_bytes"],
)
@pytest.mark.asyncio
async def test_a_padded_bundle_is_refused_and_nothing_is_stored(client, tmp_path, site_keys, tamper):
    token = generated_token(tmp_path)
    padded = tamper(*split(site_keys.evaluation_bytes))
    resp = await client.post("/v1/sites/home", data=padded, headers=bearer(token))
    assert resp.status == 400, await resp.text()
    assert client.app[STORE].site("home") is None
    ok = await client.post("/v1/sites/home", data=site_keys.evaluation_bytes, headers=bearer(token))
    assert ok.status == 201  # positive control


@pytest.mark.asyncio
async def test_the_stored_bundle_is_the_canonical_re_serialization(client, tmp_path, site_keys):
    spaced = join(*split(site_keys.evaluation_bytes))  # same keys and key id, non-canonical header bytes
    assert spaced != site_keys.evaluation_bytes
    resp = await client.post("/v1/sites/home", data=spaced, headers=bearer(generated_token(tmp_path)))
    assert resp.status == 201, await resp.text()
    assert client.app[STORE].gallery("home").bundle == site_keys.evaluation_bytes


@pytest.mark.asyncio
async def test_the_site_cap_answers_403(aiohttp_client, tmp_path, site_keys, other_keys):
    client = await aiohttp_client(closed(tmp_path / "state", max_sites=1))
    token = generated_token(tmp_path)
    assert (await client.post("/v1/sites/a", data=site_keys.evaluation_bytes, headers=bearer(token))).status == 201
    resp = await client.post("/v1/sites/b", data=other_keys.evaluation_bytes, headers=bearer(token))
    assert resp.status == 403
    assert "max_sites" in (await resp.json())["error"]
    assert client.app[STORE].site("b") is None


@pytest.mark.asyncio
async def test_the_registration_rate_answers_429_with_retry_after(aiohttp_client, tmp_path, site_keys, other_keys):
    client = await aiohttp_client(closed(tmp_path / "state", registrations_per_minute=1))
    token = generated_token(tmp_path)
    assert (await client.post("/v1/sites/a", data=site_keys.evaluation_bytes, headers=bearer(token))).status == 201
    resp = await client.post("/v1/sites/b", data=other_keys.evaluation_bytes, headers=bearer(token))
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert "registrations_per_minute" in (await resp.json())["error"]
    assert client.app[STORE].site("b") is None


def test_the_rate_window_slides():
    now = [0.0]
    gate = RegistrationGate("t", max_sites=10, per_minute=2, clock=lambda: now[0])
    gate.admit()
    now[0] = 30.0
    gate.admit()
    with pytest.raises(Exception) as refused:
        gate.admit()
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "30"
    now[0] = 60.0  # the first attempt left the window
    gate.admit()
    gate.check_capacity(9)
    with pytest.raises(Exception) as full:
        gate.check_capacity(10)
    assert full.value.status == 403


def test_the_generated_token_is_safe_on_a_command_line(tmp_path):
    # A urlsafe-base64 token starting with "-" made `init --provision-token TOKEN` an argparse error.
    dirs = [tmp_path / str(i) for i in range(50)]
    for folder in dirs:
        folder.mkdir()
    tokens = {load_or_create_provision_token(folder) for folder in dirs}
    assert all(re.fullmatch(r"[0-9a-f]{64}", token) for token in tokens) and len(tokens) == 50


# -- replicas sharing a PostgreSQL store: the token and the caps are cloud-wide -------------------


def test_the_generated_token_is_one_for_every_replica(pg_url, tmp_path):
    from blindgate.cloud.store import GalleryStore
    from blindgate.cloud.store_settings import CloudSettings, FileSecrets

    config = cloud_config(tmp_path, open_registration=False, store_url=pg_url)
    legacy = tmp_path / "host1"
    legacy.mkdir()
    old = load_or_create_provision_token(legacy)  # a single-host install moving to PostgreSQL keeps its token
    with GalleryStore(pg_url) as one, GalleryStore(pg_url) as two:
        first = RegistrationGate.for_config(config, CloudSettings(one.database), one, FileSecrets(legacy))
        second = RegistrationGate.for_config(config, CloudSettings(two.database), two, FileSecrets(tmp_path / "absent"))
    assert first.token == second.token == old


def test_the_rate_counts_registrations_through_other_replicas(pg_url, tmp_path, site_keys):
    from blindgate.cloud.store import GalleryStore
    from blindgate.cloud.store_settings import CloudSettings

    config = cloud_config(tmp_path, provision_token="t", registrations_per_minute=2, store_url=pg_url)
    with GalleryStore(pg_url) as here, GalleryStore(pg_url) as elsewhere:
        gate = RegistrationGate.for_config(config, CloudSettings(here.database), here)
        gate.admit()  # positive control: nothing registered yet
        for site in ("a", "b"):  # two registrations through another replica
            elsewhere.create_site(site, "token-" + site, site_keys.key_id, site_keys.evaluation_bytes)
        with pytest.raises(Exception) as refused:
            gate.admit()
    assert refused.value.status == 429
