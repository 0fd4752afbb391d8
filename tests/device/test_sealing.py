"""Sealed templates (device/sealing.py): open only for the site, subject, key id and version they were sealed for."""

from __future__ import annotations

import os
import stat
import struct

import numpy as np
import pytest

from blindgate.device.sealing import MAGIC, MAGIC_V1, MAX_PHOTOS, NONCE_BYTES, SealError, TemplateSealer, plaintext_distance
from blindgate.shared.limits import MAX_SEALED_BYTES

TEMPLATE = np.random.default_rng(3).normal(0, 0.09, 128)


@pytest.fixture
def sealer(tmp_path):
    TemplateSealer.create_key(tmp_path)
    return TemplateSealer.load(tmp_path, "home")


def test_round_trip_is_exact(sealer):
    blob = sealer.seal("subject-a", "key-1", TEMPLATE, "Ada Lovelace")
    opened = sealer.open(blob, "subject-a", "key-1")
    assert np.array_equal(opened.template, TEMPLATE)
    assert (opened.label, opened.version, opened.subject, opened.key_id) == ("Ada Lovelace", 1, "subject-a", "key-1")
    assert len(blob) <= MAX_SEALED_BYTES


def test_key_file_is_private_and_never_replaced(tmp_path):
    path = TemplateSealer.create_key(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(SealError, match="already exists"):
        TemplateSealer.create_key(tmp_path)


@pytest.mark.parametrize(
    "subject, key_id, site",
    [("subject-b", "key-1", "home"), ("subject-a", "key-2", "home"), ("subject-a", "key-1", "office")],
    ids=["moved-to-another-subject", "under-another-key-id", "from-another-site"],
)
def test_a_moved_blob_does_not_open(tmp_path, subject, key_id, site):
    TemplateSealer.create_key(tmp_path)
    blob = TemplateSealer.load(tmp_path, "home").seal("subject-a", "key-1", TEMPLATE, "Ada")
    with pytest.raises(SealError, match="does not open"):
        TemplateSealer.load(tmp_path, site).open(blob, subject, key_id)


def test_altered_or_forged_blobs_do_not_open(sealer, tmp_path):
    blob = bytearray(sealer.seal("subject-a", "key-1", TEMPLATE, "Ada"))
    for index in (5, 20, len(blob) - 1):  # the version, the nonce, the tag
        altered = bytearray(blob)
        altered[index] ^= 1
        with pytest.raises(SealError):
            sealer.open(bytes(altered), "subject-a", "key-1")
    other = tmp_path / "other"
    other.mkdir()
    TemplateSealer.create_key(other)
    forged = TemplateSealer.load(other, "home").seal("subject-a", "key-1", TEMPLATE, "Mallory")
    with pytest.raises(SealError, match="does not open"):
        sealer.open(forged, "subject-a", "key-1")
    for junk in (b"", b"BGT1", b"XXXX" + bytes(40), bytes(MAX_SEALED_BYTES + 1)):
        with pytest.raises(SealError):
            sealer.open(junk, "subject-a", "key-1")


def test_refuses_to_seal_what_it_could_not_check(sealer):
    with pytest.raises(SealError):
        sealer.seal("s", "k", np.full(128, np.nan), "x")
    with pytest.raises(SealError, match="too long"):
        sealer.seal("s", "k", TEMPLATE, "x" * MAX_SEALED_BYTES)


def test_plaintext_distance_is_euclidean():
    other = TEMPLATE + 0.01
    assert plaintext_distance(TEMPLATE, other) == pytest.approx(np.linalg.norm(TEMPLATE - other))


def seal_v1(sealer: TemplateSealer, subject: str, key_id: str, template: np.ndarray, label: str) -> bytes:
    """A blob in the first layout (BGT1: no photo count), as sealers before the photo count wrote them."""
    plain = struct.pack("<H", template.size) + np.asarray(template, dtype="<f8").tobytes() + label.encode()
    nonce = os.urandom(NONCE_BYTES)
    ad = sealer._ad(subject, key_id, 1, MAGIC_V1)
    return struct.pack("<4sI", MAGIC_V1, 1) + nonce + sealer._aead.encrypt(nonce, plain, ad)


def test_the_photo_count_is_sealed_and_old_blobs_still_open(sealer):
    opened = sealer.open(sealer.seal("subject-a", "key-1", TEMPLATE, "Ada", photos=3), "subject-a", "key-1")
    assert opened.photos == 3 and opened.label == "Ada" and np.array_equal(opened.template, TEMPLATE)
    old = seal_v1(sealer, "subject-a", "key-1", TEMPLATE, "Ada")
    legacy = sealer.open(old, "subject-a", "key-1")  # positive control for the layout switch
    assert legacy.photos == 0 and legacy.label == "Ada" and np.array_equal(legacy.template, TEMPLATE)
    relabelled = MAGIC + old[4:]  # a BGT1 blob passed off as BGT2 (the count would be read from the template)
    with pytest.raises(SealError, match="does not open"):
        sealer.open(relabelled, "subject-a", "key-1")
    with pytest.raises(SealError):
        sealer.seal("s", "k", TEMPLATE, "x", photos=MAX_PHOTOS + 1)
