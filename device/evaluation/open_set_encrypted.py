"""The open-set galleries through the real engine: encrypted decisions must equal plaintext ones.

One gallery per size and mode (the first repetition) is bulk-imported with `encrypt_block`, and a
sample of its probes goes through `encrypt_probe` -> `scan` -> `decode_scan`, exactly as at the
door. The decoded distances to every slot decide (nearest template's owner if within the
threshold, else no match) and are compared with numpy's decisions at each threshold given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from blindgate.shared.engine import (
    Block,
    EvaluationKeys,
    Gallery,
    SiteKeys,
    decode_scan,
    encrypt_block,
    encrypt_probe,
    generate_site_keys,
    scan,
)

from .embedding import Progress
from .open_set import Draw, decisions, distances


class EncryptedChecker:
    """One throw-away site key for every gallery checked (key generation is the slow part to repeat)."""

    def __init__(self, dim: int = 128) -> None:
        self.keys: SiteKeys = generate_site_keys(dim)
        self.cloud = EvaluationKeys.from_bytes(self.keys.evaluation_bytes)

    def check(
        self,
        embeddings: np.ndarray,
        draw: Draw,
        thresholds: Sequence[float],
        probes: int,
        rng: np.random.Generator,
        label: str = "encrypted",
        progress: bool = False,
    ) -> dict:
        """Decisions of up to `probes` probes (half genuine where there are enough) through the engine."""
        slots = self.keys.params.slots
        start = time.perf_counter()
        gallery = Gallery(self.cloud)
        for first in range(0, len(draw.templates), slots):
            blob = encrypt_block(self.keys, draw.templates[first : first + slots])
            gallery.blocks.append(Block.from_bytes(self.cloud, blob))
        occupancy, layouts = gallery.occupancy(), gallery.layouts()  # one-copy blocks: slot = template index
        gallery_s = time.perf_counter() - start

        genuine = rng.permutation(draw.genuine)[: min(len(draw.genuine), probes // 2)]
        strangers = rng.permutation(draw.strangers)[: probes - len(genuine)]
        chosen = np.concatenate([genuine, strangers])
        plain = distances(embeddings[chosen], draw.templates)
        encrypted = np.empty_like(plain)
        bar = Progress(label, len(chosen), enabled=progress)
        start = time.perf_counter()
        for i, image in enumerate(chosen):
            replies = scan(gallery, encrypt_probe(self.keys, embeddings[image]))
            match = decode_scan(self.keys, embeddings[image], replies, occupancy, layouts)
            encrypted[i] = match.distances.reshape(-1)[: len(draw.templates)]
            bar.update(i + 1)
        scan_s = time.perf_counter() - start

        per_threshold = {}
        disagreements = 0
        for t in thresholds:
            differ = int(np.sum(decisions(encrypted, draw.owners, t) != decisions(plain, draw.owners, t)))
            per_threshold[f"{t:.4f}"] = differ
            disagreements += differ
        nearest_plain = plain.min(axis=1)
        return {
            "templates": len(draw.templates),
            "blocks": len(gallery.blocks),
            "probes": len(chosen),
            "genuine_probes": len(genuine),
            "stranger_probes": len(strangers),
            "thresholds": [float(t) for t in thresholds],
            "disagreements": disagreements,
            "disagreements_by_threshold": per_threshold,
            "nearest_template_differs": int(np.sum(np.argmin(encrypted, axis=1) != np.argmin(plain, axis=1))),
            "max_abs_error": float(np.max(np.abs(encrypted - plain))) if plain.size else 0.0,
            "max_abs_error_nearest": float(np.max(np.abs(encrypted.min(axis=1) - nearest_plain))) if plain.size else 0.0,
            "closest_to_a_threshold": float(min((np.min(np.abs(nearest_plain - t)) for t in thresholds), default=float("nan"))),
            "gallery_seconds": gallery_s,
            "scan_ms_mean": 1000 * scan_s / max(len(chosen), 1),
        }
