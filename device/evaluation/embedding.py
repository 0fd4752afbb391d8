"""Embedding every image once: which face, the no-face fallback box, progress and the cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from .common import CACHE_VERSION, FALLBACK_BOX

# -- progress -----------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """`label 123/1549 (8.1/s, eta 2m05s)` on stderr: rewritten in place on a terminal,
    a line every `interval` seconds otherwise (log files)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.25 if self.tty else 15.0
        self.start = time.monotonic()
        self.last = -math.inf
        self.done = 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        eta_text = _duration(eta) if math.isfinite(eta) else "?"
        if self.done >= self.total:
            return f"{self.label} {self.done}/{self.total} ({rate:.1f}/s, took {_duration(elapsed)})"
        return f"{self.label} {self.done}/{self.total} ({rate:.1f}/s, eta {eta_text})"

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if not self.enabled or (now - self.last < self.interval and done < self.total):
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + self.line().ljust(60) + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


# -- faces and the embedding cache --------------------------------------------------------------


@dataclass(frozen=True)
class ImageFace:
    """One image's embedding and how it was obtained."""

    embedding: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]  # (top, right, bottom, left)
    fallback: bool  # True: no face detected, the fixed central box was embedded
    faces: int  # faces the detector found
    detect_ms: float
    embed_ms: float


def fallback_box(height: int, width: int):
    """The fixed central face box for an image of this size (FALLBACK_BOX scaled)."""
    from blindgate.device.faces import FaceBox

    top, right, bottom, left = FALLBACK_BOX
    return FaceBox(
        round(top * height),
        round(right * width),
        round(bottom * height),
        round(left * width),
    )


def select_face(boxes: list, height: int, width: int, select: str = "largest"):
    """The face to embed: the largest (detect sorts them so), or the one nearest the centre."""
    if select == "centre":
        return min(
            boxes,
            key=lambda b: ((b.left + b.right) / 2 - width / 2) ** 2 + ((b.top + b.bottom) / 2 - height / 2) ** 2,
        )
    return boxes[0]


def embed_image(analyzer, rgb: np.ndarray, select: str = "largest") -> ImageFace:
    """The selected detected face's embedding, or the central box's when no face is found."""
    t0 = time.perf_counter()
    boxes = analyzer.detect(rgb)
    t1 = time.perf_counter()
    height, width = rgb.shape[:2]
    box = select_face(boxes, height, width, select) if boxes else fallback_box(height, width)
    embedding = analyzer.embed(rgb, box)
    t2 = time.perf_counter()
    return ImageFace(
        embedding=embedding,
        box=(box.top, box.right, box.bottom, box.left),
        fallback=not boxes,
        faces=len(boxes),
        detect_ms=(t1 - t0) * 1000,
        embed_ms=(t2 - t1) * 1000,
    )


def face_settings(config, select: str = "largest") -> dict:
    import dlib

    return {
        "cache_version": CACHE_VERSION,
        "model": config.model,
        "upsample": config.upsample,
        "num_jitters": config.num_jitters,
        "detect_max_width": config.detect_max_width,
        "min_face_px": config.min_face_px,  # the detection scale follows it (device/faces.py)
        "selection": select,
        "fallback_box": list(FALLBACK_BOX),
        "dlib": getattr(dlib, "__version__", "?"),
    }


class EmbeddingCache:
    """Embeddings in an .npz, keyed by image path + size + mtime + face settings.

    Entries for other images or settings are kept, so one cache can serve several runs.
    """

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        self.digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.entries: dict[str, ImageFace] = {}
        self.dirty = False
        if path.is_file():
            try:
                self._load()
            except Exception as exc:  # a corrupt or foreign cache is only a lost speed-up
                print(
                    f"warning: ignoring unreadable embedding cache {path}: {exc}",
                    file=sys.stderr,
                )
                self.entries = {}

    def key(self, image: Path) -> str:
        stat = image.stat()
        return f"{image.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.digest}"

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as data:
            for i, key in enumerate(data["keys"]):
                self.entries[str(key)] = ImageFace(
                    embedding=data["embeddings"][i].copy(),
                    box=(int(data["boxes"][i][0]), int(data["boxes"][i][1]), int(data["boxes"][i][2]), int(data["boxes"][i][3])),
                    fallback=bool(data["fallback"][i]),
                    faces=int(data["faces"][i]),
                    detect_ms=float(data["detect_ms"][i]),
                    embed_ms=float(data["embed_ms"][i]),
                )

    def get(self, key: str) -> ImageFace | None:
        return self.entries.get(key)

    def put(self, key: str, face: ImageFace) -> None:
        self.entries[key] = face
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        items = list(self.entries.items())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(
            tmp,
            keys=np.array([k for k, _ in items], dtype=str),
            embeddings=np.array([f.embedding for _, f in items], dtype=np.float64).reshape(len(items), -1),
            boxes=np.array([f.box for _, f in items], dtype=np.int64).reshape(len(items), 4),
            fallback=np.array([f.fallback for _, f in items], dtype=bool),
            faces=np.array([f.faces for _, f in items], dtype=np.int64),
            detect_ms=np.array([f.detect_ms for _, f in items], dtype=np.float64),
            embed_ms=np.array([f.embed_ms for _, f in items], dtype=np.float64),
        )
        os.replace(tmp, self.path)
        self.dirty = False


def embed_images(
    paths: Sequence[Path],
    analyzer,
    cache: EmbeddingCache | None,
    progress: bool = True,
    select: str = "largest",
    save_every: int = 100,
) -> tuple[dict[Path, ImageFace], int]:
    """Every image's ImageFace (cached ones reused); returns (faces, how many came from the cache)."""
    from blindgate.device.faces import load_image

    faces: dict[Path, ImageFace] = {}
    todo = []
    for path in paths:
        key = cache.key(path) if cache else None
        hit = cache.get(key) if cache and key else None
        if hit is not None:
            faces[path] = hit
        else:
            todo.append((path, key))
    cached = len(faces)
    if progress:
        print(
            f"embedding {len(paths)} images: {cached} from the cache, {len(todo)} to compute",
            file=sys.stderr,
        )
    bar = Progress("embedding", len(todo), enabled=progress)
    try:
        for done, (path, key) in enumerate(todo, 1):
            face = embed_image(analyzer, load_image(path), select)
            faces[path] = face
            if cache and key:
                cache.put(key, face)
                if done % save_every == 0:
                    cache.save()
            bar.update(done)
    finally:
        if cache:
            cache.save()
    return faces, cached
