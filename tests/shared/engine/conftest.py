"""Engine fixtures: site keys, a small read-only gallery, and real face embeddings from ../shared.

Key generation costs seconds, so the keys live for the session; `small` is a read-only
four-template gallery that tests may query and must not change. The real embeddings (labelled
photos and LFW pairs) are skipped when ../shared is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blindgate.device.faces import FaceAnalyzer, load_image
from blindgate.shared.engine import EvaluationKeys, Gallery, SiteKeys, SlotRef, encrypt_enrollment, generate_site_keys
from tests.shared.engine.support import dlib_like


@pytest.fixture(scope="session")
def keys() -> SiteKeys:
    return generate_site_keys()


@pytest.fixture(scope="session")
def evaluation(keys: SiteKeys) -> EvaluationKeys:
    return keys.evaluation()


@pytest.fixture(scope="session")
def other_keys() -> SiteKeys:
    return generate_site_keys()


@pytest.fixture(scope="session")
def small(keys: SiteKeys, evaluation: EvaluationKeys) -> tuple[Gallery, np.ndarray, list[bytes]]:
    """Four random templates enrolled through Gallery.add (slots 0-3); read-only for the tests."""
    templates = dlib_like(np.random.default_rng(11), 4)
    enrollments = [encrypt_enrollment(keys, y) for y in templates]
    gallery = Gallery(evaluation)
    refs = [gallery.add(e) for e in enrollments]
    assert refs == [SlotRef(0, s) for s in range(4)]
    return gallery, templates, enrollments


# The first pairs of LFW's development test split: enough images (~136) to exercise 1:1 on
# real embeddings while keeping the dlib pass near 15 s.
LFW_SAME_PAIRS = 40
LFW_DIFFERENT_PAIRS = 40


@pytest.fixture(scope="session")
def lfw_dir(shared_dir: Path) -> Path:
    """``../shared/lfw-devtest``: LFW's View-1 test pairs and the images they use."""
    path = shared_dir / "lfw-devtest"
    if not (path / "pairsDevTest.txt").is_file():
        pytest.skip(f"LFW development pairs not found: {path / 'pairsDevTest.txt'}")
    return path


@pytest.fixture(scope="session")
def people_dir(faces_dir: Path) -> Path:
    path = faces_dir / "people"
    if not path.is_dir():
        pytest.skip(f"labelled face photos not found: {path}")
    return path


@pytest.fixture(scope="session")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


def embed_largest_face(analyzer: FaceAnalyzer, path: Path) -> np.ndarray | None:
    """The embedding of the largest face, without the device's quality gate (None: no face).

    The engine must match whatever embedding it is given; several LFW images are below the
    device's sharpness threshold but are still real dlib embeddings.
    """
    rgb = load_image(path)
    boxes = analyzer.detect(rgb)
    return analyzer.embed(rgb, boxes[0]) if boxes else None


@pytest.fixture(scope="session")
def people_embeddings(people_dir: Path, analyzer: FaceAnalyzer) -> list[tuple[str, str, np.ndarray]]:
    """(identity, file name, embedding) for every labelled photo (23 photos of 6 people)."""
    photos = sorted(p for p in people_dir.glob("*/*") if p.is_file())
    assert len(photos) >= 20, f"expected the 23 labelled photos in {people_dir}"
    result = []
    for path in photos:
        embedding = embed_largest_face(analyzer, path)
        assert embedding is not None, f"no face found in {path}"
        result.append((path.parent.name, path.name, embedding))
    return result


@pytest.fixture(scope="session")
def lfw_sample(lfw_dir: Path, analyzer: FaceAnalyzer) -> tuple[list[tuple[bool, str, str]], dict[str, np.ndarray]]:
    """The first same-person and different-person LFW pairs: ([(same, key_a, key_b)], {key: embedding})."""
    lines = (lfw_dir / "pairsDevTest.txt").read_text().splitlines()
    count = int(lines[0])
    rows = [line.split("\t") for line in lines[1 : 1 + LFW_SAME_PAIRS]]
    rows += [line.split("\t") for line in lines[1 + count : 1 + count + LFW_DIFFERENT_PAIRS]]
    pairs = []
    for row in rows:
        if len(row) == 3:
            name, a, b = row
            pairs.append((True, f"{name}_{int(a):04d}", f"{name}_{int(b):04d}"))
        else:
            name_a, a, name_b, b = row
            pairs.append((False, f"{name_a}_{int(a):04d}", f"{name_b}_{int(b):04d}"))
    embeddings = {}
    for key in sorted({k for _, a, b in pairs for k in (a, b)}):
        path = lfw_dir / "images" / key[:-5] / f"{key}.jpg"
        embedding = embed_largest_face(analyzer, path)
        if embedding is not None:
            embeddings[key] = embedding
    kept = [p for p in pairs if p[1] in embeddings and p[2] in embeddings]
    assert len(kept) >= 0.9 * len(pairs), f"faces found for only {len(kept)} of {len(pairs)} LFW pairs"
    return kept, embeddings
