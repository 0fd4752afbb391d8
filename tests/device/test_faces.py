"""Face analysis on real photographs from ../shared/faces (see its README for the figures)."""

import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from blindgate.device import faces
from blindgate.device.faces import (
    EMBEDDING_SIZE,
    Analyzer,
    FaceAnalyzer,
    FaceBox,
    FaceConfig,
    FaceResult,
    Rejection,
    RejectionKind,
    face_distance,
    face_sharpness,
    load_image,
)

# face_recognition's reference distance: what these photos test is the face model's own separation
# (the door's operating point is stricter and depends on the gallery: tests/device/test_operating_point.py)
THRESHOLD = 0.6


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def people(faces_dir: Path, analyzer: FaceAnalyzer) -> dict:
    """Every single-face photo analysed once: path -> (identity, result)."""
    photos = sorted((faces_dir / "people").glob("*/*"))
    assert len(photos) >= 20, f"expected the 23 labelled photos in {faces_dir / 'people'}"
    return {p: (p.parent.name, analyzer.analyze(load_image(p))) for p in photos}


def embedding_of(people: dict, name: str) -> np.ndarray:
    (result,) = [r for p, (_, r) in people.items() if p.name == name]
    assert isinstance(result, FaceResult), f"{name}: {result}"
    return result.embedding


def test_every_labelled_photo_gives_one_accepted_face(people):
    for path, (_, result) in people.items():
        assert isinstance(result, FaceResult), f"{path.name} rejected: {result.reason}"
        assert result.face_count == 1, path.name
        assert result.embedding.shape == (EMBEDDING_SIZE,)
        assert result.embedding.dtype == np.float64
        assert result.box.width >= 60 and result.sharpness >= 30


def test_threshold_separates_same_person_from_different_people(people):
    same: list[tuple[float, str, str]] = []
    different: list[tuple[float, str, str]] = []
    for (a, (who_a, ra)), (b, (who_b, rb)) in itertools.combinations(people.items(), 2):
        distance = float(face_distance(ra.embedding, rb.embedding))
        (same if who_a == who_b else different).append((distance, a.name, b.name))
    worst_same, worst_different = max(same), min(different)
    # README (face_recognition 1.3.0): same 0.06-0.52, different >= 0.67. Measured here:
    # same up to 0.52 (alex1/alex3), different from 0.65 (lin1 / obama_partial_face2).
    assert worst_same[0] < THRESHOLD < worst_different[0], (worst_same, worst_different)
    assert worst_same[0] < 0.55 and worst_different[0] > 0.62


def test_rgba_png_loads_as_rgb_and_matches_its_jpeg(faces_dir, people):
    rgba_path = faces_dir / "people" / "obama" / "obama2_rgba.png"
    raw = cv2.imread(str(rgba_path), cv2.IMREAD_UNCHANGED)
    assert raw is not None and raw.shape[2] == 4
    rgb = load_image(rgba_path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    rgba, jpeg = embedding_of(people, "obama2_rgba.png"), embedding_of(people, "obama2.jpg")
    assert face_distance(rgba, jpeg) < 0.1


def test_load_image_converts_every_layout_to_rgb(tmp_path):
    bgr = np.zeros((8, 10, 3), np.uint8)
    bgr[:] = (255, 0, 0)  # blue, in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    cv2.imwrite(str(tmp_path / "blue_rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((8, 10), 77, np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((8, 10, 3), 65535, np.uint16))
    for name in ("blue.png", "blue_rgba.png"):
        image = load_image(tmp_path / name)
        assert image.shape == (8, 10, 3) and image.dtype == np.uint8
        assert image[0, 0].tolist() == [0, 0, 255], name
    assert load_image(tmp_path / "grey.png")[0, 0].tolist() == [77, 77, 77]
    assert load_image(tmp_path / "deep.png")[0, 0].tolist() == [255, 255, 255]


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_largest_face_is_the_one_embedded(faces_dir, analyzer, people):
    # kit_with_rose.jpg: rose_leslie on the left, kit_harington on the right with the larger face.
    scene = load_image(faces_dir / "scenes" / "kit_with_rose.jpg")
    boxes = analyzer.detect(scene)
    result = analyzer.analyze(scene)
    assert isinstance(result, FaceResult)
    assert result.face_count == len(boxes) == 2
    assert result.box == boxes[0] and boxes[0].area > boxes[1].area
    assert face_distance(result.embedding, embedding_of(people, "kit1.jpg")) < THRESHOLD
    assert face_distance(result.embedding, embedding_of(people, "rose1.jpg")) > THRESHOLD


def test_scene_faces_match_the_right_people(faces_dir, analyzer, people):
    # obama_and_biden.jpg: biden, obama and a third person who is enrolled nowhere.
    scene = load_image(faces_dir / "scenes" / "obama_and_biden.jpg")
    boxes = analyzer.detect(scene)
    assert len(boxes) == 3
    assert [b.area for b in boxes] == sorted((b.area for b in boxes), reverse=True)
    refs = {"obama": embedding_of(people, "obama.jpg"), "biden": embedding_of(people, "biden.jpg")}
    matched = []
    for box in boxes:
        embedding = analyzer.embed(scene, box)
        close = [who for who, ref in refs.items() if face_distance(embedding, ref) < THRESHOLD]
        matched.append(close)
    assert sorted(matched) == [[], ["biden"], ["obama"]]


def test_blurred_face_is_rejected_as_too_blurry(faces_dir, analyzer):
    photo = load_image(faces_dir / "people" / "kit_harington" / "kit2.jpg")
    sharp = analyzer.analyze(photo)
    assert isinstance(sharp, FaceResult) and sharp.sharpness > 100
    blurred = analyzer.analyze(cv2.GaussianBlur(photo, (0, 0), 4))
    assert isinstance(blurred, Rejection) and blurred.kind == "too_blurry", blurred
    assert blurred.sharpness < analyzer.config.min_sharpness
    assert re.fullmatch(r"too blurry \(sharpness \d+\.\d < 30\)", blurred.reason), blurred.reason
    assert blurred.box is not None and blurred.face_count == 1


def test_sharpness_barely_depends_on_face_size(faces_dir, analyzer):
    photo = load_image(faces_dir / "people" / "obama" / "obama-1080p.jpg")
    box = analyzer.detect(photo)[0]
    half = cv2.resize(photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    ratio = face_sharpness(half, box.scaled(0.5)) / face_sharpness(photo, box)
    assert 0.5 < ratio < 2


def test_tiny_face_is_rejected_as_too_small(faces_dir, analyzer):
    photo = load_image(faces_dir / "people" / "obama" / "obama-1080p.jpg")
    width = analyzer.detect(photo)[0].width
    factor = 42 / width  # shrink the face to about 42 px: found (a 51 px box, FIND_BELOW_MIN) but too small
    tiny = cv2.resize(photo, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    result = analyzer.analyze(tiny)
    assert isinstance(result, Rejection) and result.kind == "too_small", result
    match = re.fullmatch(r"face too small \((\d+) px < 60 px\)", result.reason)
    assert match and int(match[1]) < 60, result.reason
    assert result.box is not None and result.box.width == int(match[1])


def test_blank_frame_has_no_face(analyzer):
    result = analyzer.analyze(np.full((480, 640, 3), 128, np.uint8))
    assert isinstance(result, Rejection)
    assert (result.kind, result.reason) == ("no_face", "no face")
    assert result.kind is RejectionKind.NO_FACE and f"skipped_{result.kind}" == "skipped_no_face"
    assert result.box is None and result.face_count == 0
    assert result.timings.detect_ms > 0 and result.timings.embed_ms == 0


def test_face_analyzer_is_an_analyzer(analyzer):
    seam: Analyzer = analyzer  # mypy checks the protocol here
    assert isinstance(seam.analyze(np.zeros((64, 64, 3), np.uint8)), Rejection)


def test_timings_cover_each_stage(people):
    result = next(r for _, r in people.values())
    t = result.timings
    assert t.detect_ms > 0 and t.quality_ms > 0 and t.embed_ms > 0
    assert t.total_ms == pytest.approx(t.detect_ms + t.quality_ms + t.embed_ms)


def test_downscaled_detection_embeds_like_full_resolution(faces_dir, analyzer):
    photo = load_image(faces_dir / "people" / "obama" / "obama-720p.jpg")
    full = FaceAnalyzer(FaceConfig(detect_max_width=None)).analyze(photo)
    fast = analyzer.analyze(photo)  # detects on a 960 px wide copy
    assert isinstance(full, FaceResult) and isinstance(fast, FaceResult)
    overlap = FaceBox(
        max(full.box.top, fast.box.top),
        min(full.box.right, fast.box.right),
        min(full.box.bottom, fast.box.bottom),
        max(full.box.left, fast.box.left),
    )
    assert overlap.area / max(full.box.area, fast.box.area) > 0.7
    assert face_distance(full.embedding, fast.embedding) < 0.1


def test_min_face_px_sets_the_detection_scale_in_frame_pixels():
    # The detection copy is scaled so that the detector's smallest box is just under min_face_px,
    # whatever the frame size: faces the quality check accepts are always findable.
    small, big = FaceAnalyzer(FaceConfig(min_face_px=60)), FaceAnalyzer(FaceConfig(min_face_px=120))
    assert big.detection_scale(640) == pytest.approx(small.detection_scale(640) / 2)
    for frame_width in (250, 640):
        assert small.smallest_face_px(frame_width) <= 60 and big.smallest_face_px(frame_width) <= 120
        assert small.smallest_face_px(frame_width) >= 0.8 * 60
    up = FaceAnalyzer(FaceConfig(upsample=1))  # dlib doubles the copy: it is made half as large
    assert up.detection_scale(640) == pytest.approx(small.detection_scale(640) / 2)
    assert small.detection_scale(5000, region=True) == small.detection_scale(640)  # regions: never capped


def test_a_width_cap_that_hides_acceptable_faces_is_warned_once(caplog):
    analyzer = FaceAnalyzer()  # copies at most 960 px wide
    assert analyzer.smallest_face_px(1920) > 60  # a 1920 px frame halved: faces under ~150 px are missed
    assert analyzer.smallest_face_px(640) <= 60
    with caplog.at_level("WARNING", logger="blindgate.device.faces"):
        analyzer.detect(np.zeros((1080, 1920, 3), np.uint8))
        analyzer.detect(np.zeros((1080, 1920, 3), np.uint8))
        analyzer.detect(np.zeros((480, 640, 3), np.uint8))  # fine at 640: no warning
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1920 px wide frames" in warnings[0] and "min_face_px is 60" in warnings[0]
    assert FaceAnalyzer(FaceConfig(detect_max_width=640)).smallest_face_px(640) > 60  # no room at all: 73 px


def test_faces_at_the_minimum_size_are_found_and_accepted(faces_dir, analyzer):
    photo = load_image(faces_dir / "people" / "obama" / "obama-1080p.jpg")
    width = analyzer.detect(photo)[0].width
    for target in (62, 70, 80):  # camera-sized frames (under 640 px wide) with faces just above the limit
        factor = target / width
        frame = cv2.resize(photo, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        result = analyzer.analyze(frame)
        assert isinstance(result, FaceResult), (target, result)


def test_cnn_detector_finds_the_same_face(faces_dir, people):
    cnn = FaceAnalyzer(FaceConfig(model="cnn", upsample=0))  # no upsampling: CNN is slow on a CPU
    result = cnn.analyze(load_image(faces_dir / "people" / "obama" / "obama_small.jpg"))
    assert isinstance(result, FaceResult)
    assert face_distance(result.embedding, embedding_of(people, "obama_small.jpg")) < 0.15


def test_face_distance_accepts_one_or_many():
    a = np.zeros(EMBEDDING_SIZE)
    b = np.zeros(EMBEDDING_SIZE)
    b[0] = 3.0
    b[1] = 4.0
    assert face_distance(a, b) == pytest.approx(5.0)
    assert np.asarray(face_distance(a, np.stack([a, b]))).tolist() == pytest.approx([0.0, 5.0])


def test_bad_input_is_refused_clearly(analyzer):
    with pytest.raises(ValueError, match="uint8 RGB"):
        analyzer.analyze(np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        analyzer.detect(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(ValueError, match="hog"):
        FaceConfig(model="mtcnn")  # type: ignore[arg-type]  # the wrong value under test


def test_missing_models_say_what_to_install(monkeypatch):
    monkeypatch.setattr(faces.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="install face-recognition-models"):
        FaceAnalyzer()
