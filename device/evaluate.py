"""`blindgate-device evaluate`: accuracy and cost of encrypted matching on LFW-format pairs.

Reproduces the seed paper's evaluation (Yang et al. 2021, "Privacy Enhanced Cloud-Based Facial
Recognition": Fig. 4 error between original and encrypted scores, Fig. 5 ROC, Table 1 time per
step, Table 2 sizes) with this project's engine:

    python -m blindgate.device.evaluate IMAGES PAIRS --out DIR [--cache FILE] [--limit N]
    python -m blindgate.device.evaluate ../shared/lfw-devtest/images ../shared/lfw-devtest/pairsDevTest.txt --out /tmp/lfw-eval
    python -m blindgate.device.evaluate --open-set IMAGES --out DIR   # open-set identification, no pairs
                                                                      # (device/evaluation/open_set_run.py)

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
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blindgate.device.evaluation.common import (
    CACHE_NAME,
    MAX_ERROR_TARGET,
    TARGET_FAR,
    InputError,
    access_threshold,
    door_accepts,
    json_default,
)
from blindgate.device.evaluation.embedding import (
    EmbeddingCache,
    embed_images,
    face_settings,
    fallback_box,
)
from blindgate.device.evaluation.encrypted import run_encrypted
from blindgate.device.evaluation.metrics import (
    accuracy,
    best_threshold,
    error_stats,
    kfold_accuracy,
    roc_auc,
    roc_curve,
    tar_at_false_accepts,
    tar_at_far,
)
from blindgate.device.evaluation.pairs import image_path, limit_pairs, parse_pairs
from blindgate.device.evaluation.report import (
    median_or_none,
    percent,
    plot_distances,
    plot_errors,
    plot_roc,
    render_report,
)

# -- main ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindgate-device evaluate",
        description="Accuracy and cost of encrypted matching on LFW-format pairs (plots, report.md, summary.json).",
        epilog="evaluate --open-set IMAGES --out DIR: open-set identification (FPIR/FNIR, DET); see evaluate --open-set --help.",
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--liveness" in argv or "--liveness-synthetic" in argv:  # the liveness check on recorded sessions
        from blindgate.device.evaluation.liveness_run import main as liveness

        return liveness(argv)
    if "--open-set" in argv:  # a different evaluation with its own options: every image, no pairs file
        from blindgate.device.evaluation.open_set_run import main as open_set

        return open_set([a for a in argv if a != "--open-set"])
    args = build_parser().parse_args(argv)
    progress = not args.quiet
    try:
        return _evaluate(args, progress, argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _evaluate(args, progress: bool, argv) -> int:
    from blindgate.device.faces import FaceAnalyzer, FaceConfig

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
    decisions = {k: door_accepts(d) for k, d in variants.items()}
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
    curves = {
        name: (d, *roc_curve(d, same)[:2])
        for name, d in (("plaintext", plain), ("encrypted 1:1", run.d11), ("encrypted 1:N", run.d1n))
    }
    auc = {k: roc_auc(*roc_curve(d, same)[:2]) for k, d in variants.items()}

    plot_errors(out / "error.png", plain, run.d11, run.d1n)
    plot_roc(out / "roc.png", curves, same)
    plot_distances(out / "distances.png", plain, same)

    used = [faces[p] for p in paths]
    fallback_list = [str(p.relative_to(args.images)) for p in paths if faces[p].fallback]
    fallback_set = {p for p in paths if faces[p].fallback}
    times = {k: median_or_none(v) for k, v in run.times_ms.items()}
    times["detect"] = median_or_none([f.detect_ms for f in used])
    times["embed"] = median_or_none([f.embed_ms for f in used])
    box250 = fallback_box(250, 250)
    import dlib
    import tenseal

    checks = {
        "decisions_identical_1to1": diff["1to1"] == 0,
        "decisions_identical_1toN": diff["1toN"] == 0,
        "max_error_within_target": max(err["1to1"]["max_abs"], err["1toN"]["max_abs"]) <= MAX_ERROR_TARGET,
        "accuracy_identical": acc["plaintext"] == acc["encrypted_1to1"] == acc["encrypted_1toN"],
    }
    command = " ".join(["python -m blindgate.device.evaluate", *(argv if argv is not None else sys.argv[1:])])
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
        "threshold": access_threshold(),
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
        "threshold_margin": float(np.min(np.abs(plain - access_threshold()))),
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
                image_path(args.images, p.first) in fallback_set or image_path(args.images, p.second) in fallback_set
                for p in pairs
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
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default) + "\n")
    (out / "report.md").write_text(render_report(summary))
    if progress:
        print(
            f"accuracy at {access_threshold()}: plaintext {percent(acc['plaintext'])}, encrypted 1:1 "
            f"{percent(acc['encrypted_1to1'])}, "
            f"1:N {percent(acc['encrypted_1toN'])}; decisions differing 1:1 {diff['1to1']}, 1:N {diff['1toN']}; "
            f"max error {max(err['1to1']['max_abs'], err['1toN']['max_abs']):.1e}; "
            f"{len(fallback_list)} fallback image(s); report: {out / 'report.md'}",
            file=sys.stderr,
        )
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
