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

# The CKKS ring and key modulus (shared/engine/context.py Params): N = 8192 and four primes, the
# last one the special prime key switching uses. Key sizes below follow from these two numbers.
RING_DEGREE = 8192
KEY_PRIMES = 4
# SEAL's 16-byte header, the seed of a seeded key and per-ciphertext metadata, per key-switch part.
SEAL_OVERHEAD_BYTES = 4096


def max_evaluation_bundle_bytes(dim: int) -> int:
    """The largest honest evaluation bundle for `dim`: computed, not guessed, so padding has no room.

    A bundle holds one relinearization key and Galois keys: today two (rotations by 1 and by the
    giant step, ~2.1 MB for dlib), before issue 14 one per power of two below `dim`, and those
    older bundles must keep loading, so the bound counts dim.bit_length() keys in all. Each is
    SEAL's seeded form: KEY_PRIMES - 1 parts, each one polynomial over all KEY_PRIMES primes (8
    bytes a coefficient) — counted uncompressed, so the bound holds for any compression mode.
    dlib's 128 values: 6.3 MB for an older ~5.6 MB bundle. The parser also insists on exactly
    one of the two key sets, so no bundle carries keys nobody uses.
    """
    per_key = (KEY_PRIMES - 1) * (KEY_PRIMES * RING_DEGREE * 8 + SEAL_OVERHEAD_BYTES)
    return MAX_HEADER_BYTES + 64 + dim.bit_length() * per_key


# What the HTTP routes read and the key file parser accepts before it knows the dimension: the
# bound for the largest dimension the engine supports (4096 values, ~10 MB). Once the header names
# the dimension, the bundle must also fit `max_evaluation_bundle_bytes(dim)`.
MAX_BUNDLE_BYTES = max_evaluation_bundle_bytes(RING_DEGREE // 2)

# The device key file: a bundle plus the secret key (one polynomial over KEY_PRIMES primes).
MAX_KEY_FILE_BYTES = MAX_BUNDLE_BYTES + KEY_PRIMES * RING_DEGREE * 8 + SEAL_OVERHEAD_BYTES + MAX_HEADER_BYTES

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
    """A gallery block holds up to `dim` diagonals (dim / copies) and one norms ciphertext, each u32-length-prefixed.

    It depends on the embedding dimension (128 for dlib: ~34 MB at most), so it is a function.
    """
    return 8 + MAX_HEADER_BYTES + (dim + 1) * (4 + MAX_BLOCK_CIPHERTEXT_BYTES)
