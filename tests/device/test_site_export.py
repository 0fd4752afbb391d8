"""device/site_export.py: the passphrase-encrypted file that carries a site's secrets to a new door."""

from __future__ import annotations

import base64
import io
import json

import pytest

from blindgate.device import site_export
from blindgate.device.site_export import SiteExport, SiteExportError, open_export, read_header, read_passphrase, seal_export

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    """The real parameters cost 64 MiB per derivation; the format is the same with a smaller n."""
    monkeypatch.setattr(site_export, "KDF", {"name": "scrypt", "n": 2**10, "r": 8, "p": 1})


def an_export() -> SiteExport:
    files = {"site.keys": b"\x00secret ckks keys\xff", "label.key": b"L" * 32, "template.key": b"T" * 32}
    cloud = {"key_id": "k" * 32, "cloud_public_key": "ab" * 32, "next_cloud_keys": [], "cloud_url": "http://127.0.0.1:1"}
    return SiteExport("home", "door2", "door2-token", b"-----BEGIN PRIVATE KEY-----\n", cloud, files, 1.0)


def test_round_trip_and_nothing_secret_in_clear():
    data = seal_export(an_export(), PASSPHRASE)
    assert open_export(data, PASSPHRASE) == an_export()
    header = read_header(data)
    assert (header["site"], header["door"]) == ("home", "door2")
    for secret in (b"secret ckks keys", b"door2-token", b"PRIVATE KEY", base64.b64encode(b"L" * 32)):
        assert secret not in data


def test_wrong_passphrase_is_refused_clearly():
    data = seal_export(an_export(), PASSPHRASE)
    with pytest.raises(SiteExportError, match="wrong passphrase"):
        open_export(data, PASSPHRASE + "!")


@pytest.mark.parametrize("field", ["door", "site", "created", "nonce"])
def test_an_altered_header_fails_like_a_wrong_passphrase(field):
    """The header is the AEAD's associated data: a file re-labelled for another door does not open."""
    document = json.loads(seal_export(an_export(), PASSPHRASE))
    document[field] = {"door": "door3", "site": "office", "created": 2.0, "nonce": base64.b64encode(b"\x01" * 12).decode()}[field]
    with pytest.raises(SiteExportError, match="wrong passphrase, or the file was altered"):
        open_export(json.dumps(document).encode(), PASSPHRASE)


def test_an_altered_ciphertext_is_refused():
    document = json.loads(seal_export(an_export(), PASSPHRASE))
    raw = bytearray(base64.b64decode(document["ciphertext"]))
    raw[10] ^= 1
    document["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SiteExportError, match="altered"):
        open_export(json.dumps(document).encode(), PASSPHRASE)


@pytest.mark.parametrize("n", [2**30, 3, 0, "x"])
def test_a_hostile_kdf_cost_is_refused_before_deriving(n):
    document = json.loads(seal_export(an_export(), PASSPHRASE))
    document["kdf"]["n"] = n
    with pytest.raises(SiteExportError, match="key derivation" if isinstance(n, int) else "wrong passphrase"):
        open_export(json.dumps(document).encode(), PASSPHRASE)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"format": "other"}', b'{"format": "blindgate-site-export/1", "site": "a/b", "door": "d"}'],
)
def test_a_foreign_file_is_named_as_such(data):
    with pytest.raises(SiteExportError, match="site export"):
        read_header(data)


def test_a_short_passphrase_is_refused():
    with pytest.raises(SiteExportError, match="at least 12"):
        seal_export(an_export(), "short")


def test_the_passphrase_comes_from_stdin_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSPHRASE + "\nrest\n"))
    assert read_passphrase(confirm=True) == PASSPHRASE
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(SiteExportError, match="no passphrase"):
        read_passphrase(confirm=False)


def test_a_prompt_asks_twice_and_refuses_a_mismatch(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter([PASSPHRASE, PASSPHRASE + "x"])
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    with pytest.raises(SiteExportError, match="differ"):
        read_passphrase(confirm=True)
