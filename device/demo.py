"""Engine demonstration: enroll real faces into an encrypted gallery and identify probes.

    python -m device.demo [--faces DIR]

With ../shared/faces beside the repository it uses those people (first photo of each enrolled,
the others as probes); without it, scikit-image's sample astronaut photograph, enrolled once and
probed with altered copies, plus a stranger-like probe made from a flipped, shifted crop.
Every step prints what it did and how long it took; no decrypted value is printed except on
this machine's own terminal, which plays the device.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from device.faces import FaceAnalyzer, FaceResult, load_image
from shared.engine import (
    EvaluationKeys,
    Gallery,
    decode_scan,
    encrypt_enrollment,
    encrypt_probe,
    generate_site_keys,
    scan,
)

DEFAULT_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces" / "people"


def _people_from_folder(folder: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    people = {}
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(f for f in person.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        people[person.name] = [(f.name, load_image(f)) for f in images]
    return people


def _people_from_sample() -> dict[str, list[tuple[str, np.ndarray]]]:
    from skimage import data  # ships its sample images: no download

    face = data.astronaut()
    darker = np.clip(face.astype(np.float64) * 0.7, 0, 255).astype(np.uint8)
    noisy = np.clip(face + np.random.default_rng(0).normal(0, 8, face.shape), 0, 255).astype(np.uint8)
    return {"astronaut": [("astronaut.png", face), ("astronaut-darker", darker), ("astronaut-noisy", noisy)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="folder of <person>/<images> (default ../shared/faces/people)")
    args = parser.parse_args(argv)

    def step(msg: str, t0: float) -> None:
        print(f"  {msg} ({(time.perf_counter() - t0) * 1000:.0f} ms)", flush=True)

    if args.faces.is_dir():
        print(f"faces: {args.faces}")
        people = _people_from_folder(args.faces)
    else:
        print(f"faces: {args.faces} not found; using scikit-image's sample astronaut photograph")
        people = _people_from_sample()

    t0 = time.perf_counter()
    analyzer = FaceAnalyzer()
    step("loaded dlib face models", t0)

    t0 = time.perf_counter()
    keys = generate_site_keys()
    step(f"device: generated site keys, evaluation bundle {len(keys.evaluation_bytes) / 1e6:.1f} MB, key id {keys.key_id}", t0)
    gallery = Gallery(EvaluationKeys.from_bytes(keys.evaluation_bytes))
    names: dict[tuple[int, int], str] = {}

    print("enrolling (first photo of each person):")
    probes = []
    for name, images in people.items():
        (first, rgb), rest = images[0], images[1:]
        result = analyzer.analyze(rgb)
        if not isinstance(result, FaceResult):
            print(f"  {name}/{first}: skipped ({result.reason})")
            continue
        t0 = time.perf_counter()
        enrollment = encrypt_enrollment(keys, result.embedding)
        ref = gallery.add(enrollment)
        names[(ref.block, ref.slot)] = name
        step(f"{name}: {len(enrollment) / 1e3:.0f} KB enrollment ciphertext -> cloud slot {ref.slot}", t0)
        probes += [(name, fname, img) for fname, img in rest]

    print("identifying (the cloud sees only ciphertexts):")
    correct = total = 0
    for name, fname, rgb in probes:
        result = analyzer.analyze(rgb)
        if not isinstance(result, FaceResult):
            print(f"  {name}/{fname}: skipped ({result.reason})")
            continue
        t0 = time.perf_counter()
        probe = encrypt_probe(keys, result.embedding)
        t1 = time.perf_counter()
        replies = scan(gallery, probe)
        t2 = time.perf_counter()
        match = decode_scan(keys, result.embedding, replies, gallery.occupancy())
        t3 = time.perf_counter()
        who = names.get((match.best.block, match.best.slot)) if match.accepted() else None
        total += 1
        correct += who == name
        verdict = f"OPEN for {who}" if who else "stay LOCKED (unknown)"
        print(
            f"  {name}/{fname}: {verdict:28s} encrypt {1000 * (t1 - t0):.0f} ms, "
            f"cloud scan {1000 * (t2 - t1):.0f} ms, decrypt {1000 * (t3 - t2):.0f} ms"
        )
    print(f"{correct}/{total} probes identified as the right person")
    return 0 if total and correct == total else 1


if __name__ == "__main__":
    sys.exit(main())
