"""The blindgate encryption engine: CKKS keys, probes, the encrypted gallery, scan and decode.

Pure computation on TenSEAL's SEAL bindings; no I/O beyond bytes in and out.

Device side: `generate_site_keys`, `encrypt_probe`, `encrypt_enrollment`, `encrypt_block`,
`decode_scan`, `decode_verify` (distances only; the access rule lives in
`blindgate.device.decision`).
Cloud side: `EvaluationKeys`, `Gallery`, `scan`, `verify`.
"""

from .context import EngineError, Params
from .decode import Match, decode_scan, decode_verify
from .encrypt import encrypt_block, encrypt_enrollment, encrypt_probe
from .gallery import Block, Gallery, SlotRef
from .keys import EvaluationKeys, SiteKeys, generate_site_keys
from .scan import scan, scan_blocks, verify

__all__ = [
    "Block",
    "EngineError",
    "EvaluationKeys",
    "Gallery",
    "Match",
    "Params",
    "SiteKeys",
    "SlotRef",
    "decode_scan",
    "decode_verify",
    "encrypt_block",
    "encrypt_enrollment",
    "encrypt_probe",
    "generate_site_keys",
    "scan",
    "scan_blocks",
    "verify",
]
