"""The blindgate encryption engine: CKKS keys, probes, the encrypted gallery, scan and decode.

Pure computation on TenSEAL's SEAL bindings; no I/O beyond bytes in and out.

Device side: `generate_site_keys`, `encrypt_probe`, `encrypt_enrollment`, `encrypt_block`,
`decode_scan`, `decode_verify` (distances only; the access rule lives in
`blindgate.device.decision`).
Cloud side: `EvaluationKeys`, `Gallery`, `scan`, `verify`; where templates go: `first_free_slot`,
`copies_for_block`, `base_slots` (pure Python, no SEAL).
"""

from .context import EngineError, Params
from .decode import Match, decode_scan, decode_verify
from .encrypt import encrypt_block, encrypt_enrollment, encrypt_probe
from .gallery import (
    Block,
    BlockLayout,
    Gallery,
    SlotRef,
    base_slots,
    block_layout,
    copies_for_block,
    first_free_slot,
    plan_blocks,
)
from .keys import EvaluationKeys, SiteKeys, generate_site_keys
from .scan import scan, scan_blocks, verify

__all__ = [
    "Block",
    "BlockLayout",
    "EngineError",
    "EvaluationKeys",
    "Gallery",
    "Match",
    "Params",
    "SiteKeys",
    "SlotRef",
    "base_slots",
    "block_layout",
    "copies_for_block",
    "plan_blocks",
    "decode_scan",
    "decode_verify",
    "encrypt_block",
    "encrypt_enrollment",
    "encrypt_probe",
    "first_free_slot",
    "generate_site_keys",
    "scan",
    "scan_blocks",
    "verify",
]
