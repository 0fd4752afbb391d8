"""Benchmark: face detection settings, time per frame against faces found, on real images.

Runs on one core (pinned) and prints one JSON object on stdout; progress goes to stderr.

    python bench/detection.py                  # every setting below, 300 LFW images
    python bench/detection.py --lfw 1000 --settings default,legacy

Images (read from ../shared, never copied): every frame of the recorded door clip
(faces/video, 640x360, analysed in order like a camera stream), the labelled photos and scenes
of faces/people and faces/scenes (240x320 to 2333x1434), and a seeded sample of LFW devtest
(250x250, one centred person each).

Per setting and image set: detect_ms (median and mean per image), images with a face found,
faces found, and `usable`: images whose largest face passes the door's own quality gate
(min_face_px 60 in the image's pixels, sharpness 30), the frames the door would embed and send.
On the clip, `tracked` settings add the tracker (device/tracking.py): the region around the
last face is scanned first. `drift` compares the embedding computed from each setting's box
with the legacy setting's box on the same image (median and max distance; the shipped
calibration was fitted with legacy boxes, so a small drift keeps it valid).

Settings (the detection copy's scale; boxes are always mapped back to the image's pixels):
- legacy: upsample 1 on a copy at most 640 px wide (the default before issue 13);
- u0-640: upsample 0, at most 640 px wide (faces under ~73 px, at 640, are missed);
- default: FaceConfig() (upsample 0, scaled so a min_face_px face is the smallest box found);
- u1-minface: upsample 1, scaled the same way (half the size, doubled inside dlib);
- default+track: the default with FaceTracker (margin 0.75, full frame every 10 frames);
- default+track-m0.5 / -m1.0: other margins.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACES = SHARED / "faces"
LFW = SHARED / "lfw-devtest" / "images"
SETTINGS = ("legacy", "u0-640", "default", "u1-minface", "default+track", "default+track-m0.5", "default+track-m1.0")


def log(msg: str) -> None:
    print(f"[detection] {msg}", file=sys.stderr, flush=True)


def clip_frames() -> list[np.ndarray]:
    import cv2  # video decoding only: the `device` extra

    cap = cv2.VideoCapture(str(FACES / "video" / "short_hamilton_clip.mp4"))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    cap.release()
    return frames


def make_analyzer(name: str):
    """(analyzer, analyse(rgb) -> boxes, scanned region) for one setting."""
    from blindgate.device.faces import FaceAnalyzer, FaceConfig
    from blindgate.device.tracking import FaceTracker

    if name == "legacy":
        analyzer = FaceAnalyzer(FaceConfig(upsample=1))
        analyzer.detection_scale = lambda width, region=False: min(1.0, 640 / width)  # type: ignore[method-assign]
    elif name == "u0-640":
        analyzer = FaceAnalyzer(FaceConfig(upsample=0))
        analyzer.detection_scale = lambda width, region=False: min(1.0, 640 / width)  # type: ignore[method-assign]
    elif name == "u1-minface":
        analyzer = FaceAnalyzer(FaceConfig(upsample=1))
    else:
        analyzer = FaceAnalyzer()
    tracker = None
    if "+track" in name:
        margin = float(name.split("-m")[1]) if "-m" in name else 0.75
        tracker = FaceTracker(margin=margin, refresh_frames=10, clock=lambda: 0.0)  # frames are consecutive

    def detect(rgb: np.ndarray):
        region = tracker.region(*rgb.shape[:2]) if tracker else None
        boxes = analyzer.detect(rgb, region)
        if tracker:
            tracker.update(boxes[0] if boxes else None, region)
        return boxes

    return analyzer, detect


def measure(name: str, images: Iterable[np.ndarray], detect: Callable, keep_boxes: bool) -> tuple[dict, list]:
    from blindgate.device.faces import FaceConfig, face_sharpness

    gate = FaceConfig()  # the door's quality gate, whatever the detection setting
    times, found, faces, usable, largest = [], 0, 0, 0, []
    for rgb in images:
        t0 = time.perf_counter()
        boxes = detect(rgb)
        times.append((time.perf_counter() - t0) * 1000)
        found += bool(boxes)
        faces += len(boxes)
        box = boxes[0] if boxes else None
        if box is not None and box.width >= gate.min_face_px and face_sharpness(rgb, box) >= gate.min_sharpness:
            usable += 1
        largest.append(box if keep_boxes else None)
    row = {
        "images": len(times),
        "detect_ms_median": round(statistics.median(times), 2),
        "detect_ms_mean": round(statistics.fmean(times), 2),
        "with_face": found,
        "faces": faces,
        "usable": usable,
    }
    return row, largest


def drift(analyzer, images: list[np.ndarray], boxes: list, reference: list, memo: dict) -> dict | None:
    """Embedding distance between this setting's box and the legacy box, where both found one."""
    from blindgate.device.faces import face_distance

    def embedding(i: int, box) -> np.ndarray:
        key = (id(images), i, box)
        if key not in memo:
            memo[key] = analyzer.embed(images[i], box)
        return memo[key]

    pairs = [(i, a, b) for i, (a, b) in enumerate(zip(boxes, reference, strict=True)) if a is not None and b is not None]
    if not pairs:
        return None
    d = [0.0 if a == b else float(face_distance(embedding(i, a), embedding(i, b))) for i, a, b in pairs]
    return {"images": len(d), "median": round(statistics.median(d), 4), "max": round(max(d), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=int, default=300, help="LFW devtest images to sample (default 300)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {','.join(SETTINGS)}")
    parser.add_argument("--no-drift", action="store_true", help="skip the embedding drift against legacy boxes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = [s for s in args.settings.split(",") if s]
    if unknown := sorted(set(names) - set(SETTINGS)):
        parser.error(f"unknown settings {unknown}")
    if not FACES.is_dir():
        print(json.dumps({"error": f"face data not found at {FACES}"}))
        return 2
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from blindgate.device.faces import load_image

    photos = [load_image(p) for p in sorted((FACES / "people").glob("*/*")) + sorted((FACES / "scenes").glob("*"))]
    lfw_paths = sorted(LFW.rglob("*.jpg")) if LFW.is_dir() else []
    random.Random(args.seed).shuffle(lfw_paths)
    sets = {"clip": clip_frames(), "photos": photos, "lfw": [load_image(p) for p in lfw_paths[: args.lfw]]}
    log(", ".join(f"{k}: {len(v)} images" for k, v in sets.items()))

    results: dict = {}
    legacy_boxes: dict[str, list] = {}
    memo: dict = {}  # embeddings by (image set, index, box): the same box is embedded once
    want_drift = not args.no_drift and "legacy" in names
    for name in ["legacy", *[n for n in names if n != "legacy"]] if want_drift else names:
        analyzer, detect = make_analyzer(name)
        results[name] = {}
        for set_name, images in sets.items():
            if "+track" in name and set_name != "clip":
                continue  # tracking is for a camera stream: consecutive frames of one scene
            detect(images[0])  # warm-up (first-call allocations)
            if "+track" in name:
                analyzer, detect = make_analyzer(name)  # a fresh tracker for the timed pass
            row, boxes = measure(name, images, detect, want_drift)
            if want_drift and name == "legacy":
                legacy_boxes[set_name] = boxes
            elif want_drift and set_name != "photos":  # photos: too few to matter, and the largest are slow to embed
                row["drift_vs_legacy"] = drift(analyzer, images, boxes, legacy_boxes[set_name], memo)
            results[name][set_name] = row
            log(f"{name} {set_name}: {row}")
    print(
        json.dumps(
            {
                "benchmark": "detection",
                "cores": 1,
                "lfw_sample": len(sets["lfw"]),
                "clip_frames": len(sets["clip"]),
                "photos": len(sets["photos"]),
                "usable_means": "largest face >= 60 px and sharpness >= 30 (the door's gate)",
                "settings": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
