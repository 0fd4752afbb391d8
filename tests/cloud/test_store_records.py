"""The gallery store's records and helpers (cloud/store_records.py): subject ids, token hashes, argument checks."""

from __future__ import annotations

import pytest

from blindgate.cloud.store_records import (
    SubjectRecord,
    hash_token,
    new_subject_id,
    require_bytes,
    require_index,
    require_text,
)
from blindgate.shared.engine.gallery import SlotRef


def test_new_subject_ids_are_random_and_opaque() -> None:
    ids = {new_subject_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_token_hash_is_stable_distinct_and_refuses_empty_tokens() -> None:
    assert hash_token("a-token") == hash_token("a-token")
    assert hash_token("a-token") != hash_token("a-token2")
    assert len(hash_token("a-token")) == 32 and b"a-token" not in hash_token("a-token")
    for bad in ("", None, b"bytes"):
        with pytest.raises(ValueError, match="non-empty string"):
            hash_token(bad)  # type: ignore[arg-type]


def test_argument_checks_name_what_is_wrong() -> None:
    assert require_text("x", "site id") == "x"
    assert require_bytes(bytearray(b"ab"), "label") == b"ab" and require_bytes(memoryview(b"c"), "label") == b"c"
    assert require_index(0, "slot") == 0
    with pytest.raises(ValueError, match="site id must be a non-empty string"):
        require_text("", "site id")
    with pytest.raises(ValueError, match="label must be bytes, got str"):
        require_bytes("text", "label")
    for bad in (-1, True, 1.0, "1"):
        with pytest.raises(ValueError, match="slot must be a non-negative integer"):
            require_index(bad, "slot")


def test_subject_record_ref_is_its_slot() -> None:
    record = SubjectRecord("s", b"label", 2, 7, 0.0)
    assert record.ref == SlotRef(2, 7)
