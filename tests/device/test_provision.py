"""provision.py: which cloud `init` trusts, the key pin, and following an endorsed key rotation.

The attack tests run the real cloud service on loopback, with an aiohttp man-in-the-middle (also
on loopback) that forwards registration and swaps the cloud key in the answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from cryptography.exceptions import InvalidSignature

from blindgate.device import cloud_client as cloud_client_module
from blindgate.device.cli import main
from blindgate.device.cloud_client import CloudClient
from blindgate.device.provision import (
    ProvisionError,
    TrustedCloudKeys,
    check_cloud_url,
    confirm_cloud_key,
    is_loopback,
    refresh_cloud_key,
    step,
)
from blindgate.device.state import CloudLink, DeviceState
from blindgate.shared.launch import CloudService
from blindgate.shared.protocol import ProtocolError, new_signing_key, public_key_to_text
from blindgate.shared.protocol.cloud_keys import endorse, fingerprint
from tests.broker import start_broker

# -- the URL rule (no network) -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "[::1]", "LOCALHOST."])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["cloud.example", "10.0.0.1", "localhost.example", "127.0.0.1.nip.io", "::2", "0.0.0.0"])
def test_remote_hosts_are_never_resolved(host):
    assert not is_loopback(host)


def test_plain_http_to_a_remote_host_needs_a_pin_or_https():
    key = public_key_to_text(new_signing_key().public_key())
    with pytest.raises(ProvisionError) as refused:
        check_cloud_url("http://cloud.example:8600", None)
    assert "--cloud-key $(blindgate-cloud public-key)" in str(refused.value) and "https://" in str(refused.value)
    check_cloud_url("http://cloud.example:8600", key)  # pinned
    check_cloud_url("https://cloud.example", None)  # certificate-verified
    check_cloud_url("http://127.0.0.1:8600", None)  # loopback
    check_cloud_url("http://[::1]:8600", None)
    with pytest.raises(ProtocolError):
        check_cloud_url("http://cloud.example:8600", "not-a-key")
    with pytest.raises(ProvisionError):
        check_cloud_url("ftp://cloud.example", key)


def test_the_pin_is_compared_as_a_key():
    key = public_key_to_text(new_signing_key().public_key())
    other = public_key_to_text(new_signing_key().public_key())
    assert confirm_cloud_key(key, key.upper()) == key
    assert confirm_cloud_key(key, None) == key
    with pytest.raises(ProvisionError, match=fingerprint(other)):
        confirm_cloud_key(other, key)
    assert fingerprint(key).startswith("SHA256:") and len(fingerprint(key)) == 7 + 32 + 7


def test_init_refuses_a_remote_http_cloud_before_any_traffic(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("init made a network call")

    monkeypatch.setattr(cloud_client_module.urllib.request, "urlopen", no_network)
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BLINDGATE_CLOUD_URL", "http://cloud.example:8600")
    assert main(["init"]) == 1
    err = capsys.readouterr().err
    assert "--cloud-key" in err and "https://" in err
    assert not (tmp_path / "state" / "cloud.json").exists()
    assert not (tmp_path / "state" / "site.keys").exists()  # refused before anything was made


# -- the real cloud, and a man in the middle ------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudService]:
    work = tmp_path_factory.mktemp("provision")
    broker = start_broker(work / "mosquitto")
    service = CloudService(work / "cloud", broker, work / "cloud.log", env={"BLINDGATE_PROVISION_TOKEN": PROVISION})
    try:
        yield service.start()
    finally:
        service.stop()
        broker.stop()


class KeySwapProxy:
    """An HTTP man in the middle on loopback: forwards everything, rewrites `cloud_public_key`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.attacker_key = public_key_to_text(new_signing_key().public_key())
        self.forwarded: list[str] = []
        self.ready = threading.Event()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        self.forwarded.append(f"{request.method} {request.path}")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with ClientSession() as session:
            async with session.request(
                request.method, self.upstream + request.path_qs, data=await request.read(), headers=headers
            ) as up:
                body, status = await up.read(), up.status
        try:
            answer = json.loads(body)
        except ValueError:
            return web.Response(body=body, status=status)
        if isinstance(answer, dict) and "cloud_public_key" in answer:
            answer["cloud_public_key"] = self.attacker_key
        return web.json_response(answer, status=status)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.ready.set()
        self._loop.run_forever()

    def __enter__(self) -> KeySwapProxy:
        self._thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


PROVISION = "provision-test-token"


def _real_key(cloud: CloudService) -> str:
    return CloudClient(cloud.url, "home").cloud_key()


def _init(state: Path, url: str, site: str, monkeypatch, *extra: str) -> int:
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(state))
    monkeypatch.setenv("BLINDGATE_CLOUD_URL", url)
    monkeypatch.setenv("BLINDGATE_SITE", site)
    monkeypatch.setenv("BLINDGATE_PROVISION_TOKEN", PROVISION)  # the token `cloud` is configured with
    return main(["init", *extra])


def test_a_swapped_cloud_key_is_refused_and_nothing_is_stored(cloud, tmp_path, monkeypatch, capsys):
    real = _real_key(cloud)
    with KeySwapProxy(cloud.url) as proxy:
        assert _init(tmp_path / "mitm", proxy.url, "mitm-site", monkeypatch, "--cloud-key", real) == 1
        assert any(line.startswith("POST /v1/sites/mitm-site") for line in proxy.forwarded)  # it did intercept
    err = capsys.readouterr().err
    assert "not the pinned --cloud-key" in err and fingerprint(proxy.attacker_key) in err
    assert not (tmp_path / "mitm" / "cloud.json").exists()
    # Positive control: the same command straight to the cloud succeeds and pins the real key.
    assert _init(tmp_path / "direct", cloud.url, "direct-site", monkeypatch, "--cloud-key", real) == 0
    out = capsys.readouterr().out
    assert fingerprint(real) in out
    assert DeviceState(tmp_path / "direct").load_cloud().cloud_public_key == real


def test_without_a_pin_the_loopback_cloud_key_is_taken_as_answered(cloud, tmp_path, monkeypatch, capsys):
    assert _init(tmp_path / "s", cloud.url, "plain-site", monkeypatch) == 0
    assert fingerprint(_real_key(cloud)) in capsys.readouterr().out


def test_init_shows_its_progress_on_stderr_and_its_result_on_stdout(cloud, tmp_path, monkeypatch, capsys):
    assert _init(tmp_path / "s", cloud.url, "progress-site", monkeypatch) == 0
    out, err = capsys.readouterr()
    steps = [line.split(" ...")[0].split(":")[0] for line in err.splitlines()]
    assert steps[:2] == ["generating the site's CKKS keys"] * 2  # announced, then done
    assert "created site keys" in err and "created door key" in err
    assert re.search(r"uploading \d+\.\d MB of evaluation keys \.\.\.\n", err)
    assert re.search(r"uploading \d+\.\d MB of evaluation keys: done in \d+\.\d s", err)
    assert "created" not in out and fingerprint(_real_key(cloud)) in out


def test_a_step_says_done_only_when_it_is(capsys):
    with step("slow thing"):
        pass
    assert re.fullmatch(r"slow thing \.\.\.\nslow thing: done in \d+\.\d s\n", capsys.readouterr().err)
    with pytest.raises(RuntimeError), step("failing thing"):
        raise RuntimeError("no")
    assert capsys.readouterr().err == "failing thing ...\n"


# -- rotation of the cloud's reply-signing key ---------------------------------------------------


class FakeCloud:
    def __init__(self, answer: dict) -> None:
        self.answer = answer

    def cloud_key_record(self) -> dict:
        return self.answer


def _provisioned(tmp_path: Path, key: str) -> DeviceState:
    state = DeviceState(tmp_path / "state")
    state.ensure_dir()
    state.save_cloud(CloudLink("home", "k1", "t", key))
    return state


def test_refresh_follows_an_endorsed_rotation_and_retires_the_old_key(tmp_path):
    old, new = new_signing_key(), new_signing_key()
    old_text, new_text = public_key_to_text(old.public_key()), public_key_to_text(new.public_key())
    state = _provisioned(tmp_path, old_text)
    keys = TrustedCloudKeys(state)
    body = b"reply body"
    with pytest.raises(InvalidSignature):
        keys.verify(new.sign(body), body)
    endorsement = endorse(old, new.public_key()).to_dict()
    # pending: both keys verify, and a running agent's TrustedCloudKeys follows the file
    message = refresh_cloud_key(state, FakeCloud({"cloud_public_key": old_text, "endorsement": endorsement}))  # type: ignore[arg-type]
    assert "accepting also" in message
    assert state.load_cloud().next_cloud_keys == [new_text]
    keys.verify(new.sign(body), body)
    keys.verify(old.sign(body), body)
    # activated: the cloud serves the new key; the old one is retired
    message = refresh_cloud_key(state, FakeCloud({"cloud_public_key": new_text, "endorsement": endorsement}))  # type: ignore[arg-type]
    assert "retired" in message
    link = state.load_cloud()
    assert (link.cloud_public_key, link.next_cloud_keys) == (new_text, [])
    keys.verify(new.sign(body), body)
    with pytest.raises(InvalidSignature):
        keys.verify(old.sign(body), body)


def test_refresh_refuses_forged_or_missing_endorsements(tmp_path):
    old, new, attacker = new_signing_key(), new_signing_key(), new_signing_key()
    old_text = public_key_to_text(old.public_key())
    attacker_text = public_key_to_text(attacker.public_key())
    state = _provisioned(tmp_path, old_text)
    before = state.cloud_path.read_bytes()
    forged = endorse(attacker, new.public_key()).to_dict()
    forged["from"] = old_text  # claims the pinned key endorsed it; signed by the attacker
    with pytest.raises(ProtocolError, match="bad signature"):
        refresh_cloud_key(state, FakeCloud({"cloud_public_key": old_text, "endorsement": forged}))  # type: ignore[arg-type]
    self_endorsed = endorse(attacker, new.public_key()).to_dict()  # by a key the device never trusted
    with pytest.raises(ProtocolError, match="does not trust"):
        refresh_cloud_key(state, FakeCloud({"cloud_public_key": old_text, "endorsement": self_endorsed}))  # type: ignore[arg-type]
    with pytest.raises(ProvisionError, match="no key this device trusts has endorsed"):
        refresh_cloud_key(state, FakeCloud({"cloud_public_key": attacker_text}))  # type: ignore[arg-type]
    assert state.cloud_path.read_bytes() == before
    # positive control: nothing to do when the cloud serves the pinned key
    assert "no change" in refresh_cloud_key(state, FakeCloud({"cloud_public_key": old_text}))  # type: ignore[arg-type]


def test_rotation_end_to_end_over_http(cloud, tmp_path, monkeypatch, capsys):
    """rotate-signing-key, refresh-cloud-key over HTTP, then activate: the door trusts the new key."""
    from blindgate.cloud.cli import main as cloud_main

    state_dir = tmp_path / "door"
    assert _init(state_dir, cloud.url, "rotating-site", monkeypatch, "--cloud-key", _real_key(cloud)) == 0
    state = DeviceState(state_dir)
    old = state.load_cloud().cloud_public_key
    capsys.readouterr()
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(cloud.state_dir))
    assert cloud_main(["rotate-signing-key"]) == 0
    new = capsys.readouterr().out.strip()
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(state_dir))
    assert main(["refresh-cloud-key"]) == 0
    assert state.load_cloud().next_cloud_keys == [new]
    assert new in state.load_cloud().verify_key() and old in state.load_cloud().verify_key()
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(cloud.state_dir))
    assert cloud_main(["activate-signing-key"]) == 0
    cloud.stop()
    cloud.start()
    assert _real_key(cloud) == new
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(state_dir))
    assert main(["refresh-cloud-key"]) == 0
    assert "retired" in capsys.readouterr().out
    link = state.load_cloud()
    assert (link.cloud_public_key, link.next_cloud_keys) == (new, [])


def test_init_without_or_with_a_wrong_provision_token_says_where_the_token_is(cloud, tmp_path, monkeypatch, capsys):
    """Registration is closed by default: init explains the file and the option; the right token then works."""
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path / "door"))
    monkeypatch.setenv("BLINDGATE_CLOUD_URL", cloud.url)
    monkeypatch.setenv("BLINDGATE_SITE", "token-site")
    monkeypatch.delenv("BLINDGATE_PROVISION_TOKEN", raising=False)
    assert main(["init"]) == 1
    err = capsys.readouterr().err
    assert "no provision token" in err and "provision-token" in err and "--provision-token" in err
    assert main(["init", "--provision-token", "wrong"]) == 1
    assert "wrong provision token" in capsys.readouterr().err
    assert main(["init", "--provision-token", PROVISION]) == 0  # positive control
