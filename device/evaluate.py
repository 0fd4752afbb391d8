"""`blindgate-device evaluate`: accuracy and cost of encrypted matching on LFW-format pairs.

Reproduces the seed paper's evaluation (Yang et al. 2021, "Privacy Enhanced Cloud-Based Facial
Recognition": Fig. 4 error between original and encrypted scores, Fig. 5 ROC, Table 1 time per
step, Table 2 sizes) with this project's engine:

    python -m device.evaluate IMAGES PAIRS --out DIR [--cache FILE] [--limit N]
    python -m device.evaluate ../shared/lfw-devtest/images ../shared/lfw-devtest/pairsDevTest.txt --out /tmp/lfw-eval

IMAGES is an LFW-format folder (`<IMAGES>/<Name>/<Name>_<NNNN>.jpg`); PAIRS an official pairs file:
a header line, then `name n1 n2` (same person) and `name1 n1 name2 n2` (different people) lines,
tab or whitespace separated. Header `500` is one fold of 500 same then 500 different pairs (the
View-1 development files); header `10 300` is the 10-fold View-2 protocol (`pairs.txt`): 10 folds
of 300 same then 300 different pairs.

Steps:
1. every distinct image is embedded once (dlib HOG with upsample 1 and the 5-point ResNet model,
   as face_recognition does; where several faces are found, the one nearest the image centre,
   as LFW crops are centred on the named person (--select largest: the door's choice); no blur
   or size gate: every pair is scored), with
   a progress line on stderr and an .npz cache so that a rerun skips the embedding;
2. every pair's plaintext distance (numpy) and its encrypted distance through the real engine,
   1:1 as in the paper (encrypt_enrollment of the first image, encrypt_probe of the second,
   verify, decode_verify) and 1:N (all distinct first images bulk-imported with encrypt_block
   into an encrypted gallery; one encrypt_probe + scan + decode_scan per pair, read at the first
   image's slot, and every other slot compared with numpy too);
3. `DIR/summary.json`, `DIR/report.md` and PNG plots (error histogram, ROC, distances).

No face found: LFW images are face-centred crops (250x250, deep-funneled), and the protocol
scores every pair, so an image where HOG finds no face is embedded with a fixed central box,
the median HOG box measured on LFW (FALLBACK_BOX); such images are counted and listed.

Exit status: 0 when the encrypted decisions equal the plaintext ones on every pair (1:1 and
1:N) and the largest distance error is at most 1e-4; 1 when a run completed but one of those
checks failed; 2 for bad input (missing images, malformed pairs file).

Decrypted distances are written to the report here by design: this is an offline evaluation on
public data with a throw-away key, never a door device's key (see README, "Who can learn what").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TextIO

import numpy as np

from shared.engine import (
    THRESHOLD,
    Block,
    EvaluationKeys,
    Gallery,
    decode_scan,
    decode_verify,
    encrypt_block,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    is_match,
    scan,
    verify,
)

# -- targets ------------------------------------------------------------------------------------

MAX_ERROR_TARGET = 1e-4  # largest acceptable |encrypted - plaintext| distance
TARGET_FAR = 1e-3
# dlib's published LFW accuracy for this model (dlib_face_recognition_resnet_model_v1), the
# figure face_recognition quotes; measured on the 10-fold View-2 pairs, not the development split.
REFERENCE_ACCURACY = 0.9938

# The fallback face box as fractions of the image (top, right, bottom, left): the median box of
# dlib's HOG detector (upsample 1) over 300 random LFW deep-funneled 250x250 images,
# (80, 175, 187, 67) px, i.e. a ~108 px square a little below the centre (HOG boxes run from the
# eyebrows to the chin). Embedding the detected images with this fixed box instead of their own
# gives the same embedding for most (median distance 0.000, 90th percentile 0.06).
FALLBACK_BOX = (80 / 250, 175 / 250, 187 / 250, 67 / 250)

CACHE_VERSION = 1
CACHE_NAME = "embeddings.npz"


class InputError(ValueError):
    """Malformed pairs file or missing images: the message says what to fix."""


# -- pairs files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One LFW pair: fold index, whether both images show the same person, and the two images."""

    fold: int
    same: bool
    first: tuple[str, int]  # (name, image number)
    second: tuple[str, int]


@dataclass(frozen=True)
class PairsFile:
    folds: int
    per_fold: int  # same-person pairs per fold (and as many different-person ones)
    pairs: list[Pair]

    @property
    def protocol(self) -> str:
        if self.folds == 1:
            return f"1 fold of {self.per_fold} same + {self.per_fold} different pairs"
        return f"{self.folds} folds of {self.per_fold} same + {self.per_fold} different pairs"


def parse_pairs(path: str | Path) -> PairsFile:
    """Read an official LFW pairs file (header `N` or `folds N`), checking every line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read pairs file {path}: {exc.strerror or exc}") from None
    numbered = [(i + 1, line.split()) for i, line in enumerate(lines)]
    numbered = [(n, fields) for n, fields in numbered if fields]
    if not numbered:
        raise InputError(f"{path}: empty pairs file")
    head_line, header = numbered[0]
    try:
        numbers = [int(v) for v in header]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        folds, per_fold = 1, numbers[0]
    elif len(numbers) == 2:
        folds, per_fold = numbers
    else:
        raise InputError(
            f"{path}:{head_line}: header must be `N` (one fold of N same + N different pairs) "
            f"or `FOLDS N` (e.g. `10 300`), got {' '.join(header)!r}"
        )
    if folds < 1 or per_fold < 1:
        raise InputError(f"{path}:{head_line}: header numbers must be positive")
    body = numbered[1:]
    expected = folds * 2 * per_fold
    if len(body) != expected:
        raise InputError(
            f"{path}: header says {folds} fold(s) x (2 x {per_fold}) = {expected} pairs, "
            f"but the file has {len(body)} pair lines"
        )
    pairs = []
    for index, (line_no, fields) in enumerate(body):
        fold, position = divmod(index, 2 * per_fold)
        want_same = position < per_fold
        try:
            if len(fields) == 3:
                name, a, b = fields
                pair = Pair(fold, True, (name, int(a)), (name, int(b)))
            elif len(fields) == 4:
                name_a, a, name_b, b = fields
                pair = Pair(fold, False, (name_a, int(a)), (name_b, int(b)))
            else:
                raise ValueError
        except ValueError:
            raise InputError(
                f"{path}:{line_no}: expected `name n1 n2` or `name1 n1 name2 n2`, got {' '.join(fields)!r}"
            ) from None
        if pair.same != want_same:
            kind = "same-person (3 fields)" if want_same else "different-person (4 fields)"
            raise InputError(
                f"{path}:{line_no}: fold {fold + 1} expects {per_fold} same-person lines then "
                f"{per_fold} different-person lines; this line should be {kind}"
            )
        pairs.append(pair)
    return PairsFile(folds, per_fold, pairs)


def limit_pairs(pairs: PairsFile, limit: int) -> PairsFile:
    """The first `limit` same and first `limit` different pairs of each fold (quick runs)."""
    kept, counts = [], {}
    for pair in pairs.pairs:
        key = (pair.fold, pair.same)
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            kept.append(pair)
    return PairsFile(pairs.folds, min(limit, pairs.per_fold), kept)


def image_path(folder: Path, image: tuple[str, int]) -> Path:
    name, number = image
    return folder / name / f"{name}_{number:04d}.jpg"


# -- metrics (pure numpy) -------------------------------------------------------------------------


def accuracy(distances, same, threshold: float = THRESHOLD) -> float:
    """Share of pairs decided correctly: same person iff distance <= threshold."""
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    return float(np.mean((d <= threshold) == same))


def best_threshold(distances, same, prefer: float = THRESHOLD) -> float:
    """The threshold with the highest accuracy on these pairs.

    Candidates are the midpoints between consecutive distinct distances (plus one below the
    smallest and one above the largest); among equally accurate ones, the closest to `prefer`.
    """
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    values = np.unique(d)
    candidates = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3]])
    pos, neg = np.sort(d[same]), np.sort(d[~same])
    correct = np.searchsorted(pos, candidates, side="right") + (len(neg) - np.searchsorted(neg, candidates, side="right"))
    best = np.flatnonzero(correct == correct.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - prefer))]])


@dataclass(frozen=True)
class FoldResult:
    fold: int
    threshold: float  # chosen on the other folds
    accuracy: float  # on this fold


def kfold_accuracy(distances, same, folds) -> list[FoldResult]:
    """LFW View-2 protocol: each fold scored with the threshold that is best on all the others."""
    d, same, folds = np.asarray(distances, float), np.asarray(same, bool), np.asarray(folds)
    results = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(d[~test], same[~test])
        results.append(FoldResult(int(fold), threshold, accuracy(d[test], same[test], threshold)))
    return results


def roc_curve(distances, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, threshold) for accepting distance <= threshold, at every distinct distance.

    Starts at (0, 0) with threshold -inf and ends at (1, 1).
    """
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    pos, neg = np.sort(d[same]), np.sort(d[~same])
    thresholds = np.unique(d)
    tar = np.searchsorted(pos, thresholds, side="right") / len(pos)
    far = np.searchsorted(neg, thresholds, side="right") / len(neg)
    return np.r_[0.0, far], np.r_[0.0, tar], np.r_[-np.inf, thresholds]


def roc_auc(far, tar) -> float:
    return float(np.sum(np.diff(far) * (np.asarray(tar)[1:] + np.asarray(tar)[:-1]) / 2))


def tar_at_false_accepts(distances, same, false_accepts: int) -> dict:
    """TAR with at most `false_accepts` different-person pairs accepted (accept iff d < limit)."""
    d, same = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    pos, neg = d[same], np.sort(d[~same])
    if false_accepts >= len(neg):
        limit = math.inf
    else:
        limit = float(neg[false_accepts])  # the first negative that must be rejected
    accepted_neg = int(np.sum(neg < limit))
    return {
        "tar": float(np.mean(pos < limit)),
        "false_accepts": accepted_neg,
        "far": accepted_neg / len(neg),
        "negatives": int(len(neg)),
        "accept_below": limit if math.isfinite(limit) else None,  # accept iff distance < this (None: all)
    }


def tar_at_far(distances, same, far: float = TARGET_FAR) -> dict:
    """TAR at FAR <= `far`, or `estimable: False` when far < 1/negatives (too few different pairs)."""
    negatives = int(np.sum(~np.asarray(same, dtype=bool)))
    allowed = int(math.floor(far * negatives + 1e-9))
    if allowed < 1:
        return {
            "target_far": far,
            "estimable": False,
            "negatives": negatives,
            "reason": (
                f"{negatives} different-person pairs: the smallest non-zero FAR they can measure is "
                f"1/{negatives} = {1 / negatives:.1e} > {far:g}; at least {math.ceil(1 / far)} are needed"
            ),
        }
    return {"target_far": far, "estimable": True, "false_accepts_allowed": allowed, **tar_at_false_accepts(distances, same, allowed)}


def error_stats(encrypted, plain) -> dict:
    encrypted, plain = np.asarray(encrypted, float), np.asarray(plain, float)
    err = np.abs(encrypted - plain)
    rel = err[plain > 0] / plain[plain > 0]
    return {
        "max_abs": float(err.max()) if err.size else 0.0,
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "max_rel": float(rel.max()) if rel.size else 0.0,
        "mean_rel": float(rel.mean()) if rel.size else 0.0,
    }


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
    from device.faces import FaceBox

    top, right, bottom, left = FALLBACK_BOX
    return FaceBox(round(top * height), round(right * width), round(bottom * height), round(left * width))


def select_face(boxes: list, height: int, width: int, select: str = "largest"):
    """The face to embed: the largest (detect sorts them so), or the one nearest the centre."""
    if select == "centre":
        return min(boxes, key=lambda b: ((b.left + b.right) / 2 - width / 2) ** 2 + ((b.top + b.bottom) / 2 - height / 2) ** 2)
    return boxes[0]


def embed_image(analyzer, rgb: np.ndarray, select: str = "largest") -> ImageFace:
    """The selected detected face's embedding, or the central box's when no face is found."""
    t0 = time.perf_counter()
    boxes = analyzer.detect(rgb)
    t1 = time.perf_counter()
    box = select_face(boxes, *rgb.shape[:2], select) if boxes else fallback_box(*rgb.shape[:2])
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
                print(f"warning: ignoring unreadable embedding cache {path}: {exc}", file=sys.stderr)
                self.entries = {}

    def key(self, image: Path) -> str:
        stat = image.stat()
        return f"{image.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.digest}"

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as data:
            for i, key in enumerate(data["keys"]):
                self.entries[str(key)] = ImageFace(
                    embedding=data["embeddings"][i].copy(),
                    box=tuple(int(v) for v in data["boxes"][i]),
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
    from device.faces import load_image

    faces: dict[Path, ImageFace] = {}
    todo = []
    for path in paths:
        key = cache.key(path) if cache else None
        hit = cache.get(key) if cache else None
        if hit is not None:
            faces[path] = hit
        else:
            todo.append((path, key))
    cached = len(faces)
    if progress:
        print(f"embedding {len(paths)} images: {cached} from the cache, {len(todo)} to compute", file=sys.stderr)
    bar = Progress("embedding", len(todo), enabled=progress)
    try:
        for done, (path, key) in enumerate(todo, 1):
            face = embed_image(analyzer, load_image(path), select)
            faces[path] = face
            if cache:
                cache.put(key, face)
                if done % save_every == 0:
                    cache.save()
            bar.update(done)
    finally:
        if cache:
            cache.save()
    return faces, cached


# -- the encrypted run --------------------------------------------------------------------------


@dataclass
class EncryptedRun:
    d11: np.ndarray  # per pair, 1:1 verify
    d1n: np.ndarray  # per pair, 1:N scan at the first image's slot
    all_slots: dict  # every probe x every gallery template: error and decision differences
    times_ms: dict[str, list[float]]
    sizes: dict[str, int]
    gallery_size: int
    blocks: int


def _timed(times: dict[str, list[float]], name: str, fn: Callable, *args):
    start = time.perf_counter()
    result = fn(*args)
    times.setdefault(name, []).append((time.perf_counter() - start) * 1000)
    return result


def run_encrypted(
    first: np.ndarray, second: np.ndarray, gallery_rows: np.ndarray, slot_of_pair: np.ndarray, progress: bool = True
) -> EncryptedRun:
    """1:1 and 1:N encrypted distances for every pair (first[i], second[i]) through the engine.

    `gallery_rows` are the distinct first images, bulk-imported in order (row r is at block
    r // slots, slot r % slots); `slot_of_pair[i]` is the row of pair i's first image.
    """
    times: dict[str, list[float]] = {}
    keys = _timed(times, "keygen", generate_site_keys, first.shape[1])
    cloud = _timed(times, "load_evaluation_keys", EvaluationKeys.from_bytes, keys.evaluation_bytes)
    slots = keys.params.slots

    gallery = Gallery(cloud)
    block_bytes = []
    for start in range(0, len(gallery_rows), slots):
        blob = _timed(times, "encrypt_block", encrypt_block, keys, gallery_rows[start : start + slots])
        block_bytes.append(len(blob))
        gallery.blocks.append(_timed(times, "load_block", Block.from_bytes, cloud, blob))
    occupancy = gallery.occupancy()

    n = len(first)
    d11, d1n = np.empty(n), np.empty(n)
    sizes: dict[str, int] = {}
    max_err, sum_err, count, flips = 0.0, 0.0, 0, 0
    self_count, self_max = 0, 0.0
    bar = Progress("encrypted 1:1 + 1:N", n, enabled=progress)
    for i in range(n):
        enrollment = _timed(times, "encrypt_enrollment", encrypt_enrollment, keys, first[i])
        probe = _timed(times, "encrypt_probe", encrypt_probe, keys, second[i])
        reply = _timed(times, "verify", verify, cloud, probe, enrollment)
        d11[i] = _timed(times, "decode_verify", decode_verify, keys, reply)

        probe_n = encrypt_probe(keys, second[i])  # a fresh encryption, as a second request would be
        replies = _timed(times, "scan", scan, gallery, probe_n)
        match = _timed(times, "decode_scan", decode_scan, keys, second[i], replies, occupancy)
        block, slot = divmod(int(slot_of_pair[i]), slots)
        d1n[i] = match.distances[block, slot]

        enc_all = match.distances.reshape(-1)[: len(gallery_rows)]
        plain_all = np.linalg.norm(gallery_rows - second[i], axis=1)
        err = np.abs(enc_all - plain_all)
        flips += int(np.sum((enc_all <= THRESHOLD) != (plain_all <= THRESHOLD)))
        # The probe's own image in the gallery (plaintext distance exactly 0): the engine decrypts
        # |x - y|^2 with an error near 1e-7 and the square root magnifies that to ~3e-4 at 0.
        own = plain_all == 0.0
        if own.any():
            self_count += int(own.sum())
            self_max = max(self_max, float(err[own].max()))
        err = err[~own]
        if err.size:
            max_err = max(max_err, float(err.max()))
            sum_err += float(err.sum())
            count += err.size
        if i == 0:
            sizes = {
                "probe": len(probe),
                "enrollment": len(enrollment),
                "reply_1to1": len(reply),
                "reply_1toN_per_block": len(replies[0]),
            }
        bar.update(i + 1)
    sizes["evaluation_keys"] = len(keys.evaluation_bytes)
    sizes["gallery_block"] = max(block_bytes)
    sizes["device_key_file"] = len(keys.to_bytes())
    all_slots = {
        "comparisons": count,
        "decision_differences": flips,
        "max_abs_error": max_err,
        "mean_abs_error": sum_err / count if count else 0.0,
        "identical_image_comparisons": self_count,
        "identical_image_max_abs_error": self_max,
    }
    return EncryptedRun(d11, d1n, all_slots, times, sizes, len(gallery_rows), len(gallery.blocks))


# -- plots --------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the evaluation plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(path: Path, plain, d11, d1n) -> None:
    """Fig. 4 analogue: relative error of encrypted distances (1:1, 1:N), and absolute error vs distance."""
    plt = _pyplot()
    plain = np.asarray(plain)
    safe = np.where(plain > 0, plain, np.nan)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, enc, label, color in ((axes[0], d11, "1:1 verify", "tab:blue"), (axes[1], d1n, "1:N scan", "tab:orange")):
        rel = (np.asarray(enc) - plain) / safe
        rel = rel[np.isfinite(rel)]
        ax.hist(rel, bins=50, color=color, alpha=0.8)
        ax.set_title(f"{label}: relative error (max |rel| {np.max(np.abs(rel), initial=0):.1e})")
        ax.set_xlabel("(encrypted - plaintext) / plaintext distance")
        ax.set_ylabel("pairs")
        ax.grid(True, alpha=0.3)
        axes[2].scatter(plain, np.abs(np.asarray(enc) - plain), s=8, alpha=0.6, color=color, label=label)
    right = axes[2]
    right.axhline(MAX_ERROR_TARGET, color="red", linestyle="--", label=f"target {MAX_ERROR_TARGET:g}")
    right.axvline(THRESHOLD, color="grey", linestyle=":", label=f"threshold {THRESHOLD}")
    right.set_yscale("log")
    right.set_title("Absolute error vs plaintext distance")
    right.set_xlabel("plaintext Euclidean distance")
    right.set_ylabel("|encrypted - plaintext|")
    right.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"Encrypted vs plaintext distances on {len(plain)} LFW pairs (cf. seed paper Fig. 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(path: Path, curves: dict[str, tuple], same) -> None:
    """Fig. 5 analogue: ROC of plaintext and encrypted distances overlaid (log FAR and zoom)."""
    plt = _pyplot()
    negatives = int(np.sum(~np.asarray(same, bool)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"plaintext": ("black", "-", 3.0), "encrypted 1:1": ("tab:blue", "--", 1.8), "encrypted 1:N": ("tab:orange", ":", 1.8)}
    for name, (distances, far, tar) in curves.items():
        color, style, width = styles.get(name, ("tab:green", "-.", 1.5))
        label = f"{name} (AUC {roc_auc(far, tar):.4f})"
        shown = far > 0
        left.step(far[shown], tar[shown], where="post", color=color, linestyle=style, linewidth=width, label=label)
        right.step(far, tar, where="post", color=color, linestyle=style, linewidth=width, label=label)
        op_far = np.mean(np.asarray(distances)[~np.asarray(same, bool)] <= THRESHOLD)
        op_tar = np.mean(np.asarray(distances)[np.asarray(same, bool)] <= THRESHOLD)
        right.plot([op_far], [op_tar], marker="o", color=color, markersize=7, fillstyle="none")
    left.set_xscale("log")
    # Both panels start at the TAR reached before the first false accept.
    lowest = min(float(tar[far == 0].max()) for _, far, tar in curves.values())
    for ax in (left, right):
        ax.set_ylim(max(0.0, lowest - 0.01), 1.002)
    left.set_xlim(1 / negatives / 1.5, 1)
    left.set_title(f"ROC, log FAR (smallest non-zero FAR = 1/{negatives})")
    right.set_xlim(-0.002, 0.1)
    right.set_title(f"ROC zoom (circles: threshold {THRESHOLD})")
    for ax in (left, right):
        ax.set_xlabel("false accept rate (different-person pairs accepted)")
        ax.set_ylabel("true accept rate (same-person pairs accepted)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("ROC of plaintext and encrypted matching (cf. seed paper Fig. 5); the curves coincide")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_distances(path: Path, plain, same) -> None:
    plt = _pyplot()
    plain, same = np.asarray(plain), np.asarray(same, bool)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(0, max(1.0, float(plain.max()) + 0.02), 60)
    ax.hist(plain[same], bins=bins, alpha=0.6, color="tab:green", label=f"same person ({same.sum()})")
    ax.hist(plain[~same], bins=bins, alpha=0.6, color="tab:red", label=f"different people ({(~same).sum()})")
    ax.axvline(THRESHOLD, color="black", linestyle="--", label=f"threshold {THRESHOLD}")
    ax.set_xlabel("plaintext Euclidean distance between dlib embeddings")
    ax.set_ylabel("pairs")
    ax.set_title("Distance distributions of the LFW pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- report -------------------------------------------------------------------------------------


def _median(values: Sequence[float] | None) -> float | None:
    return float(statistics.median(values)) if values else None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f} ms" if value >= 100 else f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def _tar_text(entry: dict) -> str:
    if not entry.get("estimable", True):
        return "not estimable"
    return f"{_pct(entry['tar'])} ({entry['false_accepts']} of {entry['negatives']} different pairs accepted)"


def render_report(s: dict) -> str:
    ds, acc, diff, err, face = s["dataset"], s["accuracy_at_threshold"], s["decision_differences"], s["distance_error"], s["faces"]
    t, sz, checks = s["timing_ms_median"], s["sizes_bytes"], s["checks"]
    ok = lambda flag: "PASS" if flag else "FAIL"  # noqa: E731
    lines = [
        "# blindgate: encrypted face matching on LFW",
        "",
        f"Pairs: `{ds['pairs_file']}` — {ds['protocol']} ({ds['pairs']} pairs, {ds['images']} distinct images"
        + (f", limited to the first {ds['limit']} of each kind per fold" if ds.get("limit") else "")
        + f"). Images: `{ds['images_dir']}`.",
        f"Embeddings: dlib {face['settings']['model'].upper()} detector, upsample {face['settings']['upsample']}, "
        f"{face['settings']['num_jitters']} jitter, 5-point landmarks + ResNet (as face_recognition), {face['settings']['selection']} face, no quality gate. "
        f"Encryption: CKKS N=8192, one fresh site key; gallery of {s['gallery']['templates']} distinct first images "
        f"in {s['gallery']['blocks']} block(s), bulk-imported with `encrypt_block`.",
        "",
        "## Checks",
        "",
        "| check | result | |",
        "|---|---|---|",
        f"| encrypted decisions = plaintext decisions, 1:1 | {diff['1to1']} of {ds['pairs']} pairs differ | {ok(checks['decisions_identical_1to1'])} |",
        f"| encrypted decisions = plaintext decisions, 1:N | {diff['1toN']} of {ds['pairs']} pairs differ | {ok(checks['decisions_identical_1toN'])} |",
        f"| max \\|encrypted − plaintext\\| distance ≤ {MAX_ERROR_TARGET:g} | 1:1 {err['1to1']['max_abs']:.2e}, 1:N {err['1toN']['max_abs']:.2e} | {ok(checks['max_error_within_target'])} |",
        f"| encrypted accuracy = plaintext accuracy | {_pct(acc['plaintext'])} / {_pct(acc['encrypted_1to1'])} / {_pct(acc['encrypted_1toN'])} | {ok(checks['accuracy_identical'])} |",
        "",
        f"Closest plaintext distance to the threshold: {s['threshold_margin']:.2e} away, "
        f"{s['threshold_margin'] / max(err['1to1']['max_abs'], err['1toN']['max_abs'], 1e-300):.0f}× the largest error. "
        f"Beyond the pairs, every 1:N scan also returned the distance to all {s['gallery']['templates']} gallery templates: "
        f"{err['1toN_all_slots']['comparisons']:,} probe–template comparisons of different images, max error "
        f"{err['1toN_all_slots']['max_abs_error']:.2e}; {diff['1toN_all_slots']} decision(s) differing from numpy over all "
        f"{err['1toN_all_slots']['comparisons'] + err['1toN_all_slots']['identical_image_comparisons']:,} comparisons."
        + (
            f" Separately, {err['1toN_all_slots']['identical_image_comparisons']} comparison(s) of a probe with its own image in the gallery "
            f"(plaintext distance 0) decrypt to a distance of at most {err['1toN_all_slots']['identical_image_max_abs_error']:.1e}: "
            "near 0 the square root magnifies the ~1e-7 error of the decrypted squared distance (negative values clamp to 0); "
            "this is far from the threshold and changes no decision, so these are kept out of the error figures."
            if err["1toN_all_slots"]["identical_image_comparisons"]
            else ""
        ),
        "",
        "## Accuracy",
        "",
        "| | plaintext (numpy) | encrypted 1:1 | encrypted 1:N |",
        "|---|---:|---:|---:|",
        f"| accuracy at threshold {s['threshold']} | {_pct(acc['plaintext'])} | {_pct(acc['encrypted_1to1'])} | {_pct(acc['encrypted_1toN'])} |",
    ]
    kf = s.get("kfold")
    if kf:
        row = " | ".join(
            f"{_pct(kf[k]['mean'])} ± {100 * kf[k]['std']:.2f} (SE {100 * kf[k]['stderr']:.2f})" for k in ("plaintext", "encrypted_1to1", "encrypted_1toN")
        )
        lines.append(f"| {ds['folds']}-fold, threshold from the other folds (mean ± std) | {row} |")
    bt = s["best_threshold_same_pairs"]
    lines.append(
        "| threshold tuned on these same pairs (optimistic) | "
        + " | ".join(f"{_pct(bt[k]['accuracy'])} at {bt[k]['threshold']:.4f}" for k in ("plaintext", "encrypted_1to1", "encrypted_1toN"))
        + " |"
    )
    tf = s["tar_at_far"]
    lines += [
        f"| TAR at FAR ≤ {TARGET_FAR:g} | " + " | ".join(_tar_text(tf[k]["target"]) for k in ("plaintext", "encrypted_1to1", "encrypted_1toN")) + " |",
        "| TAR with 0 false accepts (FAR < 1/negatives) | " + " | ".join(_tar_text(tf[k]["zero_false_accepts"]) for k in ("plaintext", "encrypted_1to1", "encrypted_1toN")) + " |",
        "| TAR at FAR = 1/negatives (1 false accept) | " + " | ".join(_tar_text(tf[k]["one_false_accept"]) for k in ("plaintext", "encrypted_1to1", "encrypted_1toN")) + " |",
        "| ROC AUC | " + " | ".join(f"{s['roc_auc'][k]:.5f}" for k in ("plaintext", "encrypted_1to1", "encrypted_1toN")) + " |",
        "",
    ]
    if not tf["plaintext"]["target"]["estimable"]:
        lines += [f"TAR at FAR {TARGET_FAR:g}: not estimable — {tf['plaintext']['target']['reason']}.", ""]
    if kf:
        lines += [
            "Per fold (plaintext): "
            + ", ".join(f"{_pct(a)} @ {th:.3f}" for a, th in zip(kf["plaintext"]["accuracies"], kf["plaintext"]["thresholds"])),
            "",
        ]
    else:
        lines += ["Fold-wise threshold selection: not applicable to a single fold (run the 10-fold View-2 `pairs.txt` for it).", ""]
    lines += [
        f"Reference: dlib reports {_pct(REFERENCE_ACCURACY)} for this model on the 10-fold LFW View-2 protocol "
        "(the figure face_recognition quotes, ~99.4%); the development split is a different, smaller set of pairs, "
        "so the comparison that matters here is plaintext vs encrypted on the same pairs.",
        "",
        f"Plaintext errors at {s['threshold']}: {s['errors_at_threshold']['false_rejects']} same-person pairs rejected, "
        f"{s['errors_at_threshold']['false_accepts']} different-person pairs accepted "
        "(faces = faces the detector found in each image; 0 = central fallback box, more than 1 = "
        f"the {face['settings']['selection']} was embedded):",
        "",
        "| pair | kind | distance | faces |",
        "|---|---|---:|---|",
    ]
    wrong = s["misclassified_pairs"]
    for w in wrong[:50]:
        lines.append(f"| {w['first']} – {w['second']} | {'same' if w['same'] else 'different'} | {w['distance']:.4f} | {w['faces'][0]}, {w['faces'][1]} |")
    if len(wrong) > 50:
        lines.append(f"| … {len(wrong) - 50} more in summary.json | | | |")
    lines += [
        "",
        "## Distance error (cf. seed paper Fig. 4)",
        "",
        "![error](error.png)",
        "",
        "| | max abs | mean abs | max relative | mean relative |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (("1to1", "1:1 verify"), ("1toN", "1:N scan, pair's slot")):
        e = err[key]
        lines.append(f"| {label} | {e['max_abs']:.2e} | {e['mean_abs']:.2e} | {e['max_rel']:.2e} | {e['mean_rel']:.2e} |")
    a = err["1toN_all_slots"]
    lines += [
        f"| 1:N scan, all {a['comparisons']:,} distances between a probe and another image's template | {a['max_abs_error']:.2e} | {a['mean_abs_error']:.2e} | | |",
        "",
        "## ROC (cf. seed paper Fig. 5)",
        "",
        "![roc](roc.png)",
        "",
        "![distances](distances.png)",
        "",
        "## Time per step (cf. seed paper Table 1), median",
        "",
        "| step | where | median |",
        "|---|---|---:|",
        f"| face detection (HOG, upsample {face['settings']['upsample']}) | device | {_ms(t['detect'])} |",
        f"| embedding (landmarks + ResNet) | device | {_ms(t['embed'])} |",
        f"| encrypt probe | device | {_ms(t['encrypt_probe'])} |",
        f"| encrypt enrollment | device | {_ms(t['encrypt_enrollment'])} |",
        f"| encrypt gallery block (bulk, up to 4096 templates) | device | {_ms(t['encrypt_block'])} |",
        f"| 1:1 verify | cloud | {_ms(t['verify'])} |",
        f"| 1:N scan of {s['gallery']['templates']} templates ({s['gallery']['blocks']} block(s)) | cloud | {_ms(t['scan'])} |",
        f"| decrypt 1:1 (decode_verify) | device | {_ms(t['decode_verify'])} |",
        f"| decrypt 1:N (decode_scan) | device | {_ms(t['decode_scan'])} |",
        f"| site key generation (once) | device | {_ms(t['keygen'])} |",
        "",
        f"Embedding times: {face['timed_images']} images timed when embedded"
        + (f" (the other {face['cached']} came from the cache with the times of the run that embedded them)" if face["cached"] else "")
        + f". Machine: {s['environment']['machine']}, tenseal {s['environment']['tenseal']}, dlib {s['environment']['dlib']}.",
        "Seed paper, as quoted in the README: 2.1 s per 1:1 comparison and 70 MB of keys.",
        "",
        "## Sizes (cf. seed paper Table 2)",
        "",
        "| message | bytes | |",
        "|---|---:|---:|",
        f"| probe (device → cloud) | {sz['probe']:,} | {_size(sz['probe'])} |",
        f"| enrollment (device → cloud) | {sz['enrollment']:,} | {_size(sz['enrollment'])} |",
        f"| 1:1 reply (cloud → device) | {sz['reply_1to1']:,} | {_size(sz['reply_1to1'])} |",
        f"| 1:N reply per block of 4096 (cloud → device) | {sz['reply_1toN_per_block']:,} | {_size(sz['reply_1toN_per_block'])} |",
        f"| evaluation keys (device → cloud, once) | {sz['evaluation_keys']:,} | {_size(sz['evaluation_keys'])} |",
        f"| stored gallery block (bulk import) | {sz['gallery_block']:,} | {_size(sz['gallery_block'])} |",
        f"| device key file (never leaves the device) | {sz['device_key_file']:,} | {_size(sz['device_key_file'])} |",
        "",
        "## Faces",
        "",
        f"- {face['detected']} of {ds['images']} images: face found by the detector "
        f"({face['multi_face_images']} with more than one face: the {face['settings']['selection']} one was embedded).",
        f"- {face['fallback_images']} image(s) with no face found: embedded with the fixed central box "
        f"(top, right, bottom, left) = {tuple(face['fallback_box_250px'])} px on a 250x250 image "
        "(fractions of the image size otherwise), the median HOG box on LFW; LFW images are face-centred crops and "
        "the protocol scores every pair, so none is dropped.",
    ]
    if face["fallback_list"]:
        lines.append("  Fallback images: " + ", ".join(f"`{p}`" for p in face["fallback_list"]))
    lines += [
        f"- {face['pairs_with_fallback']} pair(s) involve a fallback image.",
        "",
        "## Command",
        "",
        f"```\n{s['command']}\n```",
        "",
        "Distances in this report were decrypted with a throw-away evaluation key; a door device never reveals them.",
        "",
    ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindgate-device evaluate",
        description="Accuracy and cost of encrypted matching on LFW-format pairs (plots, report.md, summary.json).",
    )
    parser.add_argument("images", type=Path, help="LFW-format folder: <images>/<Name>/<Name>_<NNNN>.jpg")
    parser.add_argument("pairs", type=Path, help="pairs file: header `N` (dev files) or `10 300` (pairs.txt)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--cache", type=Path, help=f"embedding cache .npz (default: OUT/{CACHE_NAME})")
    parser.add_argument("--no-cache", action="store_true", help="embed every image afresh and keep nothing")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N same and N different pairs of each fold")
    parser.add_argument("--model", choices=("hog", "cnn"), default="hog", help="face detector (default hog)")
    parser.add_argument("--upsample", type=int, default=1, help="detector upsampling (default 1, as face_recognition)")
    parser.add_argument("--jitters", type=int, default=1, help="embedding jitters (default 1, as face_recognition)")
    parser.add_argument(
        "--select",
        choices=("largest", "centre"),
        default="centre",
        help="face to embed when several are found: the one nearest the image centre (default: LFW "
        "images are crops centred on the named person) or the largest (as the door device picks)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.quiet
    try:
        return _evaluate(args, progress, argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _evaluate(args, progress: bool, argv) -> int:
    from device.faces import FaceAnalyzer, FaceConfig

    pairs_file = parse_pairs(args.pairs)
    if args.limit is not None:
        if args.limit < 1:
            raise InputError("--limit must be at least 1")
        pairs_file = limit_pairs(pairs_file, args.limit)
    pairs = pairs_file.pairs
    if not args.images.is_dir():
        raise InputError(f"image folder {args.images} does not exist")
    paths = sorted({image_path(args.images, img) for p in pairs for img in (p.first, p.second)})
    missing = [p for p in paths if not p.is_file()]
    if missing:
        hint = ""
        if (args.images / "images").is_dir():
            hint = f" (did you mean {args.images / 'images'}?)"
        shown = ", ".join(str(p) for p in missing[:5])
        raise InputError(f"{len(missing)} of {len(paths)} images named by the pairs are missing{hint}: {shown}")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = FaceConfig(model=args.model, upsample=args.upsample, num_jitters=args.jitters)
    settings = face_settings(config, args.select)
    cache = None if args.no_cache else EmbeddingCache(args.cache or out / CACHE_NAME, settings)
    analyzer = FaceAnalyzer(config)
    faces, cached = embed_images(paths, analyzer, cache, progress, args.select)

    # Pair arrays; the gallery holds each distinct first image once.
    first = np.array([faces[image_path(args.images, p.first)].embedding for p in pairs])
    second = np.array([faces[image_path(args.images, p.second)].embedding for p in pairs])
    same = np.array([p.same for p in pairs])
    fold = np.array([p.fold for p in pairs])
    gallery_keys = sorted({p.first for p in pairs})
    row_of = {key: i for i, key in enumerate(gallery_keys)}
    gallery_rows = np.array([faces[image_path(args.images, k)].embedding for k in gallery_keys])
    slot_of_pair = np.array([row_of[p.first] for p in pairs])

    plain = np.linalg.norm(first - second, axis=1)
    run = run_encrypted(first, second, gallery_rows, slot_of_pair, progress)

    variants = {"plaintext": plain, "encrypted_1to1": run.d11, "encrypted_1toN": run.d1n}
    decisions = {k: np.array([is_match(v) for v in d]) for k, d in variants.items()}
    diff = {
        "1to1": int(np.sum(decisions["encrypted_1to1"] != decisions["plaintext"])),
        "1toN": int(np.sum(decisions["encrypted_1toN"] != decisions["plaintext"])),
        "1toN_all_slots": run.all_slots["decision_differences"],
    }
    err = {"1to1": error_stats(run.d11, plain), "1toN": error_stats(run.d1n, plain), "1toN_all_slots": run.all_slots}
    acc = {k: accuracy(d, same) for k, d in variants.items()}

    kfold = None
    if pairs_file.folds > 1:
        kfold = {}
        for k, d in variants.items():
            results = kfold_accuracy(d, same, fold)
            accs = np.array([r.accuracy for r in results])
            kfold[k] = {
                "mean": float(accs.mean()),
                "std": float(accs.std(ddof=1)),
                "stderr": float(accs.std(ddof=1) / math.sqrt(len(accs))),
                "accuracies": accs.tolist(),
                "thresholds": [r.threshold for r in results],
            }
    best = {}
    for k, d in variants.items():
        th = best_threshold(d, same)
        best[k] = {"threshold": th, "accuracy": accuracy(d, same, th)}
    tars = {
        k: {
            "target": tar_at_far(d, same, TARGET_FAR),
            "zero_false_accepts": tar_at_false_accepts(d, same, 0),
            "one_false_accept": tar_at_false_accepts(d, same, 1),
        }
        for k, d in variants.items()
    }
    curves = {name: (d, *roc_curve(d, same)[:2]) for name, d in (("plaintext", plain), ("encrypted 1:1", run.d11), ("encrypted 1:N", run.d1n))}
    auc = {k: roc_auc(*roc_curve(d, same)[:2]) for k, d in variants.items()}

    plot_errors(out / "error.png", plain, run.d11, run.d1n)
    plot_roc(out / "roc.png", curves, same)
    plot_distances(out / "distances.png", plain, same)

    used = [faces[p] for p in paths]
    fallback_list = [str(p.relative_to(args.images)) for p in paths if faces[p].fallback]
    fallback_set = {p for p in paths if faces[p].fallback}
    times = {k: _median(v) for k, v in run.times_ms.items()}
    times["detect"] = _median([f.detect_ms for f in used])
    times["embed"] = _median([f.embed_ms for f in used])
    box250 = fallback_box(250, 250)
    import dlib
    import tenseal

    checks = {
        "decisions_identical_1to1": diff["1to1"] == 0,
        "decisions_identical_1toN": diff["1toN"] == 0,
        "max_error_within_target": max(err["1to1"]["max_abs"], err["1toN"]["max_abs"]) <= MAX_ERROR_TARGET,
        "accuracy_identical": acc["plaintext"] == acc["encrypted_1to1"] == acc["encrypted_1toN"],
    }
    command = " ".join(["python -m device.evaluate", *(argv if argv is not None else sys.argv[1:])])
    summary = {
        "dataset": {
            "images_dir": str(args.images),
            "pairs_file": str(args.pairs),
            "protocol": pairs_file.protocol,
            "folds": pairs_file.folds,
            "limit": args.limit,
            "pairs": len(pairs),
            "same": int(same.sum()),
            "different": int((~same).sum()),
            "images": len(paths),
        },
        "threshold": THRESHOLD,
        "accuracy_at_threshold": acc,
        "errors_at_threshold": {
            "false_rejects": int(np.sum(same & ~decisions["plaintext"])),
            "false_accepts": int(np.sum(~same & decisions["plaintext"])),
        },
        "misclassified_pairs": [
            {
                "first": "{}_{:04d}".format(*p.first),
                "second": "{}_{:04d}".format(*p.second),
                "fold": p.fold,
                "same": p.same,
                "distance": float(plain[i]),
                "faces": [faces[image_path(args.images, p.first)].faces, faces[image_path(args.images, p.second)].faces],
            }
            for i, p in enumerate(pairs)
            if decisions["plaintext"][i] != p.same
        ],
        "kfold": kfold,
        "best_threshold_same_pairs": best,
        "tar_at_far": tars,
        "roc_auc": auc,
        "decision_differences": diff,
        "distance_error": err,
        "threshold_margin": float(np.min(np.abs(plain - THRESHOLD))),
        "gallery": {"templates": run.gallery_size, "blocks": run.blocks},
        "timing_ms_median": times,
        "timing_samples": {k: len(v) for k, v in run.times_ms.items()},
        "sizes_bytes": run.sizes,
        "faces": {
            "settings": settings,
            "detected": sum(not f.fallback for f in used),
            "fallback_images": len(fallback_list),
            "fallback_list": fallback_list,
            "fallback_box_250px": [box250.top, box250.right, box250.bottom, box250.left],
            "pairs_with_fallback": sum(
                image_path(args.images, p.first) in fallback_set or image_path(args.images, p.second) in fallback_set for p in pairs
            ),
            "multi_face_images": sum(f.faces > 1 for f in used),
            "cached": cached,
            "timed_images": len(paths) - cached,
        },
        "checks": checks,
        "passed": all(checks[k] for k in ("decisions_identical_1to1", "decisions_identical_1toN", "max_error_within_target")),
        "environment": {
            "machine": f"{platform.machine()}, {os.cpu_count()} cpu(s), Python {platform.python_version()}",
            "tenseal": getattr(tenseal, "__version__", "?"),
            "dlib": getattr(dlib, "__version__", "?"),
        },
        "command": command,
        "files": ["summary.json", "report.md", "error.png", "roc.png", "distances.png"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(render_report(summary))
    if progress:
        print(
            f"accuracy at {THRESHOLD}: plaintext {_pct(acc['plaintext'])}, encrypted 1:1 {_pct(acc['encrypted_1to1'])}, "
            f"1:N {_pct(acc['encrypted_1toN'])}; decisions differing 1:1 {diff['1to1']}, 1:N {diff['1toN']}; "
            f"max error {max(err['1to1']['max_abs'], err['1toN']['max_abs']):.1e}; "
            f"{len(fallback_list)} fallback image(s); report: {out / 'report.md'}",
            file=sys.stderr,
        )
    return 0 if summary["passed"] else 1


def _json_default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
