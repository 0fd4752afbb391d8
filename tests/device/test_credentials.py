"""Credentials: salted scrypt hashes on the device only; unique; resolved to one subject or none."""

from __future__ import annotations

import json
import stat

import pytest

from blindgate.device.claims import CredentialKind
from blindgate.device.credentials import CredentialError, CredentialStore, drop_credentials, set_credentials

ALICE, BOB = "a" * 32, "b" * 32


def test_resolve_the_right_subject_and_nobody_else(tmp_path):
    set_credentials(tmp_path, ALICE, badge="BADGE-1", pin="4711")
    set_credentials(tmp_path, BOB, pin="1234")
    store = CredentialStore(tmp_path)
    assert store.resolve(CredentialKind.PIN, "4711") == ALICE
    assert store.resolve(CredentialKind.BADGE, "BADGE-1") == ALICE
    assert store.resolve(CredentialKind.PIN, "1234") == BOB
    assert store.resolve(CredentialKind.PIN, "0000") is None
    assert store.resolve(CredentialKind.BADGE, "4711") is None  # a PIN is no badge
    assert store.resolve(CredentialKind.PIN, "12") is None  # malformed: nobody


def test_only_salted_hashes_are_stored_owner_only(tmp_path):
    set_credentials(tmp_path, ALICE, badge="BADGE-1", pin="4711")
    set_credentials(tmp_path, BOB, pin="9999")
    store = CredentialStore(tmp_path)
    text = store.path.read_text()
    assert "4711" not in text and "BADGE-1" not in text and "9999" not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    records = json.loads(text)["subjects"]
    assert records[ALICE]["pin"]["salt"] != records[BOB]["pin"]["salt"]
    assert records[ALICE]["pin"]["n"] >= 2**14  # memory-hard


def test_a_credential_belongs_to_one_subject(tmp_path):
    set_credentials(tmp_path, ALICE, badge="BADGE-1", pin="4711")
    with pytest.raises(CredentialError):
        set_credentials(tmp_path, BOB, pin="4711")
    with pytest.raises(CredentialError):
        CredentialStore(tmp_path).check_available(None, badge="BADGE-1")
    CredentialStore(tmp_path).check_available(ALICE, badge="BADGE-1")  # their own
    set_credentials(tmp_path, ALICE, pin="5555")  # replacing one's own PIN
    assert CredentialStore(tmp_path).resolve("pin", "4711") is None
    assert CredentialStore(tmp_path).resolve("pin", "5555") == ALICE


@pytest.mark.parametrize(
    ("kind", "value"), [("pin", "12a4"), ("pin", "123"), ("pin", "1" * 13), ("badge", "has space"), ("badge", "")]
)
def test_malformed_credentials_are_refused(tmp_path, kind, value):
    with pytest.raises(CredentialError) as caught:
        set_credentials(tmp_path, ALICE, **{kind: value})
    assert value not in str(caught.value) or not value


def test_removed_subject_claims_nobody(tmp_path):
    set_credentials(tmp_path, ALICE, badge="BADGE-1", pin="4711")
    assert drop_credentials(tmp_path, ALICE)
    assert CredentialStore(tmp_path).resolve("pin", "4711") is None
    assert CredentialStore(tmp_path).resolve("badge", "BADGE-1") is None
    assert not drop_credentials(tmp_path, ALICE)


def test_credentials_follow_an_add_to_reenrollment(tmp_path):
    set_credentials(tmp_path, ALICE, pin="4711")
    CredentialStore(tmp_path).move(ALICE, BOB)
    assert CredentialStore(tmp_path).resolve("pin", "4711") == BOB


def test_clear_one_kind(tmp_path):
    set_credentials(tmp_path, ALICE, badge="BADGE-1", pin="4711")
    CredentialStore(tmp_path).clear(ALICE, (CredentialKind.PIN,))
    assert CredentialStore(tmp_path).kinds() == {ALICE: ["badge"]}
