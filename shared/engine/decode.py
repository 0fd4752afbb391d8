"""Device side: decrypt the cloud's results into distances. Nothing decrypted here may leave the device.

Deciding what a distance means is not the engine's job: `blindgate.device.decision.access_verdict`
holds the access rule.

Decrypted CKKS values handed back to whoever holds the ciphertexts let them recover the secret
key (Li–Micciancio 2020), so distances stay in this process: callers publish decisions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from .context import LEVEL_REPLY, EngineError, load_ciphertext
from .encrypt import check_embedding
from .gallery import SlotRef, base_mask, block_layout
from .keys import SiteKeys


@dataclass(frozen=True)
class Match:
    """The best enrolled slot for a probe, its Euclidean distance, and every slot's distance."""

    best: SlotRef | None
    distance: float
    distances: np.ndarray  # (blocks, slots) Euclidean distances; NaN where no template is enrolled


def _decrypt(keys: SiteKeys, reply: bytes, what: str) -> np.ndarray:
    ctx = keys.context
    ct = load_ciphertext(ctx, reply, LEVEL_REPLY, what, scale=ctx.reply_scale)
    plain = seal.Plaintext()
    seal.Decryptor(ctx.seal, keys.secret).decrypt(ct, plain)
    return np.asarray(ctx.decode(plain), dtype=np.float64)


def decode_scan(
    keys: SiteKeys,
    embedding,
    replies: Sequence[bytes | None],
    occupancy: Sequence[np.ndarray],
    copies: Sequence[int],
) -> Match:
    """Decrypt one reply per block; squared distance = |x|^2 + (|y|^2 - 2<x, y>) per occupied slot.

    `copies[i]` is block i's layout (`BlockResult.copies`, `Gallery.layouts()`): a template's partial sums in
    its copies' slots are added up into its base slot, the slot `occupancy` marks.
    """
    if len(replies) != len(occupancy):
        raise EngineError(f"{len(replies)} block results but occupancy for {len(occupancy)} blocks")
    layouts = list(copies)
    if len(layouts) != len(replies):
        raise EngineError(f"{len(replies)} block results but layouts for {len(layouts)} blocks")
    x = check_embedding(embedding, keys.params)
    norm2 = float(x @ x)
    params = keys.params
    slots = params.slots
    distances = np.full((len(replies), slots), np.nan)
    for index, (reply, occupied, layout) in enumerate(zip(replies, occupancy, layouts)):
        occupied = np.asarray(occupied, dtype=bool)
        if occupied.shape != (slots,):
            raise EngineError(f"block {index}: occupancy must cover {slots} slots")
        offsets = block_layout(params, layout).offsets  # refuses an unknown layout
        if occupied[~base_mask(params, layout)].any():
            raise EngineError(f"block {index}: a template is marked outside the base slots of a {layout}-copy block")
        if reply is None:
            if occupied.any():
                raise EngineError(f"block {index}: no result for a block that holds templates")
            continue
        values = _decrypt(keys, reply, f"result of block {index}")
        summed = sum(np.roll(values, -offset) for offset in offsets)  # summed[p] = sum of values[p + o]
        squared = np.maximum(norm2 + summed, 0.0)
        distances[index, occupied] = np.sqrt(squared[occupied])
    if np.all(np.isnan(distances)):
        return Match(best=None, distance=float("inf"), distances=distances)
    flat = int(np.nanargmin(distances))
    block, slot = divmod(flat, slots)
    return Match(best=SlotRef(block, slot), distance=float(distances[block, slot]), distances=distances)


def decode_verify(keys: SiteKeys, reply: bytes) -> float:
    """Decrypt a 1:1 result: every slot holds |x - y|^2; their mean averages the noise away."""
    values = _decrypt(keys, reply, "verification result")
    return float(np.sqrt(max(float(np.mean(values)), 0.0)))
