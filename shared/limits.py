"""Every byte limit blindgate enforces, in one table, with the reason for each value.

Parsers refuse input above these sizes before doing any work with it, so a malformed or hostile
upload costs at most this much memory. The device and the cloud import the same numbers, so a
door never produces what its cloud would refuse. Change a value here, and in shared/protocol.md.
"""

from __future__ import annotations

# The JSON header of any framed file or message (shared/framing.py). Honest headers are well
# under 2 KB (a key file's parameters, a block's 512-byte occupancy as hex, a reply's block list).
MAX_HEADER_BYTES = 64 * 1024

# A probe request on MQTT: a level-1 probe ciphertext is ~116 KB; allow headroom for the header
# but refuse anything that could not be one.
MAX_PROBE_BYTES = 300 * 1024

# An evaluation bundle (seeded relinearization + Galois keys) is ~6 MB for dlib's 128 values and
# under 10 MB for 512: cap what is parsed (and what the HTTP route reads) well above any honest
# bundle. The device key file (bundle + secret key) is parsed under the same cap.
MAX_BUNDLE_BYTES = 32 * 1024 * 1024

# An enrollment ciphertext uploaded over HTTP: a level-2 ciphertext is at most 2 x 3 x 8192 x 8
# bytes (~390 KB) plus SEAL's headers, and usually much less once compressed.
MAX_ENROLLMENT_BYTES = 400 * 1024

# A device-encrypted subject label, decoded: a name, a 12-byte nonce and a 16-byte tag fit easily.
MAX_LABEL_BYTES = 1024

# A template sealed by the device (device/sealing.py): 4 + 4 + 12 bytes of header, a 16-byte tag,
# 2 + 8 x dim bytes of template (4 KB at 512 values) and a name of at most 1 KB.
MAX_SEALED_BYTES = 8 * 1024

# One serialized level-1 ciphertext at N=8192 (2 polynomials x 2 primes x 8192 coefficients x 8
# bytes, uncompressed) plus SEAL's headers: the largest diagonal a gallery block can hold.
MAX_BLOCK_CIPHERTEXT_BYTES = 2 * 2 * 8192 * 8 + 4096


def max_block_bytes(dim: int) -> int:
    """A gallery block holds `dim` diagonals and one norms ciphertext, each u32-length-prefixed.

    It depends on the embedding dimension (128 for dlib: ~34 MB at most), so it is a function.
    """
    return 8 + MAX_HEADER_BYTES + (dim + 1) * (4 + MAX_BLOCK_CIPHERTEXT_BYTES)
