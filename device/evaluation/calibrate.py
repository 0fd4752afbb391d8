"""`blindgate-device calibrate`: fit the operating-point calibration on an LFW-format folder.

    blindgate-device calibrate ../shared/lfw-devtrain/images --out device/data/calibration.json

Every image is embedded once (as the evaluation does: dlib HOG, the face nearest the centre, the
fixed central box when none is found; an .npz cache makes a rerun cheap). Then, for every image
as a probe, against every template of OTHER people:

- `single` templates are the other images themselves;
- `mean` templates are the means of k photos (default 3) of each person with at least k photos,
  several random k-subsets per person (`--draws`);
- `separate`: the same k-photo subsets kept as k templates each; a person counts as within t
  when the nearest of their k photos is.

Every other person weighs the same (a gallery holds each person once, however many photos the
folder has of them); every probe image weighs the same. Images where no face was found are left
out (the door never probes a frame without a detected face).

F_p(t), the share of those templates within t of probe p, is computed on a threshold grid; for
each grid point the F_p of all probes are sorted and summarised as `--buckets` bucket means (the
model, device/operating_point.py, only needs their distribution per threshold). The genuine rates
are the shares of same-person (photo, template) pairs within t: every pair of photos of a person
(`single`), and each photo against the mean of k other photos of the same person (`mean`).

The output is a small JSON file with its provenance (folder, counts, settings, command). Fit on
devtrain only; measure on devtest (`blindgate-device evaluate --open-set`), whose people differ.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blindgate.device.operating_point import CALIBRATION_FORMAT

from .common import CACHE_NAME, InputError

GRID = (0.20, 0.005, 121)  # 0.20 .. 0.80: below, nobody is matched; above, nearly everybody


def lfw_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Every `<Name>/<Name>_NNNN.jpg` under an LFW-format folder, with the person each shows."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: give an LFW-format images folder (<Name>/<Name>_NNNN.jpg)")
    paths = sorted(p for p in folder.glob("*/*.jpg") if p.is_file())
    if not paths:
        raise InputError(f"no <Name>/<Name>_NNNN.jpg images under {folder}")
    return paths, [p.parent.name for p in paths]


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Euclidean distances between the rows of a and b (float64)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def photos_by_person(people) -> dict[str, list[int]]:
    """Image indices of each person, in image order."""
    by_person: dict[str, list[int]] = defaultdict(list)
    for index, person in enumerate(people):
        by_person[str(person)].append(index)
    return by_person


def subsets(people: np.ndarray, k: int, draws: int, rng: np.random.Generator) -> tuple[list[list[int]], np.ndarray]:
    """Up to `draws` distinct random k-photo subsets of each person with at least k photos; returns (subsets, owners)."""
    by_person = photos_by_person(people)
    chosen, owners = [], []
    for person, indices in sorted(by_person.items()):
        if len(indices) < k:
            continue
        seen: set[tuple[int, ...]] = set()
        for _ in range(draws * 4):
            subset = tuple(sorted(rng.choice(indices, size=k, replace=False).tolist()))
            if subset in seen:
                continue
            seen.add(subset)
            chosen.append(list(subset))
            owners.append(person)
            if len(seen) >= draws:
                break
    return chosen, np.array(owners)


def mean_templates(embeddings: np.ndarray, people: np.ndarray, k: int, draws: int, rng: np.random.Generator):
    """Means of k random photos, `draws` distinct subsets per person with at least k photos; returns (templates, owners)."""
    chosen, owners = subsets(people, k, draws, rng)
    templates = np.array([embeddings[subset].mean(axis=0) for subset in chosen])
    return templates.reshape(-1, embeddings.shape[1]), owners


def _weighted_shares(distances: np.ndarray, other: np.ndarray, weights: np.ndarray, grid) -> np.ndarray:
    """(rows, grid): per row, the weighted share of its `other` columns whose distance is within each threshold."""
    shares = np.zeros((distances.shape[0], len(grid)))
    for row in range(distances.shape[0]):
        found, w = distances[row][other[row]], weights[other[row]]
        if found.size:
            order = np.argsort(found)
            cumulative = np.concatenate([[0.0], np.cumsum(w[order])])
            shares[row] = cumulative[np.searchsorted(found[order], grid, side="right")] / cumulative[-1]
    return shares


def separate_rates(embeddings, people, chosen: list[list[int]], owners: np.ndarray, grid, chunk: int = 512) -> np.ndarray:
    """(probes, grid): each probe's chance that a random OTHER person, enrolled as k separate photos,
    has one of them within each threshold (the nearest of the k decides)."""
    _, owner_index, owner_counts = np.unique(owners, return_inverse=True, return_counts=True)
    weights = 1.0 / owner_counts[owner_index]
    flat = np.array([i for subset in chosen for i in subset])
    k = len(chosen[0]) if chosen else 1
    rates = np.zeros((len(embeddings), len(grid)))
    for start in range(0, len(embeddings), chunk):
        nearest = squared_distances(embeddings[start : start + chunk], embeddings[flat]).reshape(-1, len(chosen), k).min(axis=2)
        other = people[start : start + chunk, None] != owners[None, :]
        rates[start : start + chunk] = _weighted_shares(nearest, other, weights, grid)
    return rates


def impostor_rates(probes, probe_people, templates, template_people, grid, chunk: int = 512) -> np.ndarray:
    """(probes, grid): each probe's chance that a random OTHER person's template lies within each threshold.

    Every other person weighs the same (their templates share one vote), as a gallery holds each
    enrolled person once, however many photos of them the folder happens to have.
    """
    _, owner_index, owner_counts = np.unique(template_people, return_inverse=True, return_counts=True)
    weights = 1.0 / owner_counts[owner_index]
    rates = np.zeros((len(probes), len(grid)))
    for start in range(0, len(probes), chunk):
        block = squared_distances(probes[start : start + chunk], templates)
        other = probe_people[start : start + chunk, None] != template_people[None, :]
        rates[start : start + chunk] = _weighted_shares(block, other, weights, grid)
    return rates


def genuine_single(embeddings, people, grid) -> tuple[np.ndarray, int]:
    """Share of same-person photo pairs within each threshold, and how many pairs."""
    by_person = photos_by_person(people)
    found = []
    for indices in by_person.values():
        if len(indices) >= 2:
            d = squared_distances(embeddings[indices], embeddings[indices])
            found.append(d[np.triu_indices(len(indices), 1)])
    distances = np.sort(np.concatenate(found)) if found else np.zeros(0)
    return np.searchsorted(distances, grid, side="right") / max(1, distances.size), int(distances.size)


def _genuine_subsets(embeddings, people, k: int, draws: int, rng, distance) -> tuple[np.ndarray, int]:
    """Each photo against `draws` random k-subsets of the OTHER photos of the same person: the sorted distances."""
    found = []
    for indices in photos_by_person(people).values():
        if len(indices) < k + 1:
            continue
        for probe in indices:
            others = [i for i in indices if i != probe]
            for _ in range(draws):
                subset = rng.choice(others, size=k, replace=False)
                found.append(float(distance(embeddings[probe], embeddings[subset])))
    return np.sort(np.array(found)), len(found)


def genuine_mean(embeddings, people, k: int, draws: int, rng) -> tuple[np.ndarray, int]:
    """Each photo against the mean of k other photos of the same person."""
    return _genuine_subsets(embeddings, people, k, draws, rng, lambda x, ys: np.linalg.norm(x - ys.mean(axis=0)))


def genuine_separate(embeddings, people, k: int, draws: int, rng) -> tuple[np.ndarray, int]:
    """Each photo against the nearest of k other photos of the same person."""
    return _genuine_subsets(embeddings, people, k, draws, rng, lambda x, ys: np.min(np.linalg.norm(ys - x, axis=1)))


def buckets(rates: np.ndarray, count: int) -> np.ndarray:
    """(grid, count): per threshold, the probes' rates sorted and averaged in `count` equal groups."""
    ordered = np.sort(rates, axis=0)
    groups = np.array_split(np.arange(ordered.shape[0]), min(count, ordered.shape[0]))
    return np.stack([ordered[g].mean(axis=0) for g in groups], axis=1)


def _rounded(values: np.ndarray) -> list:
    return [float(f"{v:.4g}") for v in np.asarray(values).reshape(-1)]


def fit(
    embeddings: np.ndarray, people: Sequence[str], k: int = 3, draws: int = 5, bucket_count: int = 128, seed: int = 12
) -> dict:
    """The calibration tables (format CALIBRATION_FORMAT) from embeddings and who each shows."""
    labels = np.asarray(people)
    if len(set(labels.tolist())) < 2:
        raise InputError("calibration needs photos of at least two people")
    rng = np.random.default_rng(seed)
    start, step, count = GRID
    grid = start + step * np.arange(count)
    single = impostor_rates(embeddings, labels, embeddings, labels, grid)
    g_single, n_single = genuine_single(embeddings, labels, grid)
    templates, owners = mean_templates(embeddings, labels, k, draws, rng)
    enrollments = {
        "single": {
            "impostor": [_rounded(row) for row in buckets(single, bucket_count)],
            "genuine": _rounded(g_single),
            "impostor_pairs": int(sum((labels[:, None] != labels[None, :]).sum(1))),
            "genuine_pairs": n_single,
        }
    }
    stats = {"single_impostor_pairs": enrollments["single"]["impostor_pairs"], "single_genuine_pairs": n_single}
    if len(templates) and len(set(owners.tolist())) >= 2:
        mean = impostor_rates(embeddings, labels, templates, owners, grid)
        g_distances, n_mean = genuine_mean(embeddings, labels, k, draws, rng)
        g_mean = np.searchsorted(g_distances, grid, side="right") / max(1, n_mean)
        enrollments["mean"] = {
            "impostor": [_rounded(row) for row in buckets(mean, bucket_count)],
            "genuine": _rounded(g_mean),
            "impostor_pairs": int(sum((labels[:, None] != owners[None, :]).sum(1))),
            "genuine_pairs": n_mean,
            "templates": len(templates),
            "k": k,
        }
        stats.update(mean_impostor_pairs=enrollments["mean"]["impostor_pairs"], mean_genuine_pairs=n_mean)
        chosen, owners = subsets(labels, k, draws, np.random.default_rng(seed + 1))
        separate = separate_rates(embeddings, labels, chosen, owners, grid)
        g_distances, n_separate = genuine_separate(embeddings, labels, k, draws, rng)
        enrollments["separate"] = {
            "impostor": [_rounded(row) for row in buckets(separate, bucket_count)],
            "genuine": _rounded(np.searchsorted(g_distances, grid, side="right") / max(1, n_separate)),
            "impostor_pairs": int(sum((labels[:, None] != owners[None, :]).sum(1))) * k,
            "genuine_pairs": n_separate,
            "templates": len(chosen) * k,
            "k": k,
        }
        stats.update(separate_genuine_pairs=n_separate)
    return {
        "format": CALIBRATION_FORMAT,
        "grid": {"start": start, "step": step, "count": count},
        "enrollments": enrollments,
        "provenance": {
            "images": len(labels),
            "people": len(set(labels.tolist())),
            "k": k,
            "draws": draws,
            "buckets": bucket_count,
            "seed": seed,
            **stats,
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindgate-device calibrate",
        description="Fit the operating-point calibration (false/true open rates vs threshold) on an LFW-format folder.",
    )
    parser.add_argument("images", type=Path, help="LFW-format folder: <Name>/<Name>_NNNN.jpg (fit on lfw-devtrain)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the calibration JSON")
    parser.add_argument("--cache", type=Path, help=f"embedding cache (.npz; default: next to --out, {CACHE_NAME})")
    parser.add_argument("--k", type=int, default=3, help="photos averaged into one 'mean' template (default 3)")
    parser.add_argument("--draws", type=int, default=5, help="random k-subsets per person (default 5)")
    parser.add_argument("--buckets", type=int, default=128, help="probe groups per threshold (default 128)")
    parser.add_argument("--seed", type=int, default=12)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blindgate.device.faces import FaceAnalyzer, FaceConfig

    from .embedding import EmbeddingCache, embed_images, face_settings

    try:
        paths, people = lfw_images(args.images)
    except InputError as exc:
        print(f"blindgate-device calibrate: {exc}", file=sys.stderr)
        return 2
    config = FaceConfig()
    settings = face_settings(config, "centre")
    cache = EmbeddingCache(args.cache or args.out.with_name(CACHE_NAME), settings)
    faces, _ = embed_images(paths, FaceAnalyzer(config), cache, True, "centre")
    found = [i for i, p in enumerate(paths) if not faces[p].fallback]  # the door never probes a frame without a face
    embeddings = np.array([faces[paths[i]].embedding for i in found])
    people = [people[i] for i in found]
    print(f"fitting on {len(found)} images of {len(set(people))} people ...", file=sys.stderr)
    data = fit(embeddings, people, args.k, args.draws, args.buckets, args.seed)
    data["provenance"].update(
        folder=args.images.resolve().parent.name + "/" + args.images.name,
        no_face_images_left_out=len(paths) - len(found),
        face_settings={k: v for k, v in settings.items() if k != "cache_version"},
        command=f"blindgate-device calibrate {args.images} --out {args.out} --k {args.k} --draws {args.draws} "
        f"--buckets {args.buckets} --seed {args.seed}",
        fitted=datetime.date.today().isoformat(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
