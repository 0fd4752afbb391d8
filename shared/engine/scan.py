"""Cloud side: compare an encrypted probe with encrypted templates, learning nothing.

1:N `scan` pays the probe's baby-step rotations once (as many as the gallery's blocks need) and
then, per block, `dim / copies` ciphertext multiplications (no relinearization) and G_r
giant-step rotations (see `gallery.BlockLayout`). 1:1 `verify` compares a probe with one
enrollment ciphertext, as the seed paper does, summing the `dim` squared differences with
b - 1 + G - 1 rotations (log2(dim) with an older bundle) instead of 127.
"""

from __future__ import annotations

from collections.abc import Sequence

import tenseal.sealapi as seal

from .context import LEVEL_ENROLL, LEVEL_PROBE, EngineError, load_ciphertext, to_bytes
from .gallery import Block, Gallery, rotation_sum
from .keys import EvaluationKeys


def load_probe(keys: EvaluationKeys, probe: bytes) -> seal.Ciphertext:
    """Validate a probe received from a device (level, size, scale, parameters)."""
    return load_ciphertext(keys.context, probe, LEVEL_PROBE, "probe")


def baby_steps(keys: EvaluationKeys, probe: seal.Ciphertext, count: int | None = None) -> list[seal.Ciphertext]:
    """rot(probe, j) for j < count (default b): the only per-query rotations, shared by every block."""
    ev = keys.context.evaluator
    steps = [probe]
    for _ in range(1, keys.params.baby if count is None else count):
        nxt = seal.Ciphertext()
        ev.rotate_vector(steps[-1], 1, keys.galois, nxt)
        steps.append(nxt)
    return steps


def scan_block(keys: EvaluationKeys, block: Block, steps: list[seal.Ciphertext]) -> bytes:
    """One block's encrypted |y_s|^2 - 2<x, y_s> for all its slots: one level-0 ciphertext."""
    if block.diagonals is None or block.norms is None:
        raise EngineError("an empty block has nothing to scan")
    ev, b = keys.context.evaluator, block.layout.stride
    if len(steps) < block.layout.baby:
        raise EngineError(f"a {block.copies}-copy block needs {block.layout.baby} baby steps, got {len(steps)}")
    acc = None
    # Horner over giant steps: acc = S_{G-1}; acc = S_g + rot(acc, b) down to g = 0.
    for row in reversed(block.diagonals):
        partial = seal.Ciphertext()
        ev.multiply(steps[0], row[0], partial)
        product = seal.Ciphertext()
        for step, diagonal in zip(steps[1:], row[1:]):
            ev.multiply(step, diagonal, product)
            ev.add_inplace(partial, product)
        ev.rescale_to_next_inplace(partial)
        if acc is None:
            acc = partial
        else:
            ev.relinearize_inplace(acc, keys.relin)
            ev.rotate_vector_inplace(acc, b, keys.galois)
            ev.add_inplace(acc, partial)
    ev.add_inplace(acc, block.norms)
    ev.relinearize_inplace(acc, keys.relin)
    return to_bytes(acc)


def scan_blocks(keys: EvaluationKeys, blocks: Sequence[Block], probe: bytes) -> list[bytes | None]:
    """1:N over the given blocks; `None` for an empty block (nothing to compare)."""
    count = max((block.layout.baby for block in blocks if block.count), default=1)
    steps = baby_steps(keys, load_probe(keys, probe), count)
    return [scan_block(keys, block, steps) if block.count else None for block in blocks]


def scan(gallery: Gallery, probe: bytes) -> list[bytes | None]:
    """1:N identification: one encrypted result per block of the gallery, in block order."""
    return scan_blocks(gallery.keys, gallery.blocks, probe)


def verify(keys: EvaluationKeys, probe: bytes, enrollment: bytes) -> bytes:
    """1:1 verification: Enc(|x - y|^2) in every slot, from a probe and one enrollment ciphertext."""
    ctx, ev = keys.context, keys.context.evaluator
    x = load_probe(keys, probe)
    y = load_ciphertext(ctx, enrollment, LEVEL_ENROLL, "enrollment")
    ev.mod_switch_to_inplace(y, ctx.parms_id(LEVEL_PROBE))
    diff = seal.Ciphertext()
    ev.sub(x, y, diff)
    ev.square_inplace(diff)
    ev.relinearize_inplace(diff, keys.relin)
    ev.rescale_to_next_inplace(diff)
    rotation_sum(ctx, diff, keys)
    return to_bytes(diff)
