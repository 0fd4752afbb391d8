"""decode.py: decrypting the cloud's replies into distances, and refusing replies that do not fit."""

from __future__ import annotations

import numpy as np
import pytest

from blindgate.shared.engine import EngineError, decode_scan, encrypt_probe, scan


def test_decode_refuses_mismatched_inputs(keys, small):
    gallery, templates, _ = small
    replies = scan(gallery, encrypt_probe(keys, templates[0]))
    with pytest.raises(EngineError, match="shape"):
        decode_scan(keys, templates[0][:64], replies, gallery.occupancy(), gallery.layouts())
    with pytest.raises(EngineError, match="occupancy for 2 blocks"):
        decode_scan(keys, templates[0], replies, gallery.occupancy() * 2, gallery.layouts() * 2)
    with pytest.raises(EngineError, match="4096 slots"):
        decode_scan(keys, templates[0], replies, [np.ones(100, bool)], [1])
    with pytest.raises(EngineError, match="no result for a block"):
        decode_scan(keys, templates[0], [None], gallery.occupancy(), gallery.layouts())
