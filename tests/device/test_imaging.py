"""Image files, resizing, greyscale and the Laplacian without OpenCV (device/imaging.py).

OpenCV is the reference where it is installed: the blur threshold and the detection copy were
measured with it, so the numpy versions must agree with it (exactly, or to within rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from blindgate.device.faces import SHARPNESS_SIZE, FaceAnalyzer, face_sharpness
from blindgate.device.imaging import grey_to_rgb, laplacian_variance, load_image, resize, to_grey

cv2 = pytest.importorskip("cv2", reason="OpenCV is the reference these values were measured with")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())


def test_grey_and_laplacian_match_opencv_exactly(photo):
    grey = to_grey(photo)
    assert np.array_equal(grey, cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY))
    assert laplacian_variance(grey) == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F).var(), rel=1e-12)
    assert np.array_equal(grey_to_rgb(grey), cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))


@pytest.mark.parametrize("size", [(256, 256), (200, 150), (333, 500), (640, 640), (700, 700), (128, 128), (60, 90)])
def test_resize_matches_opencv_area_to_within_rounding(photo, size):
    width, height = size
    ours, theirs = resize(photo, width, height), cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - theirs)
    assert difference.max() <= 1 and difference.mean() < 0.1, (difference.max(), difference.mean())


def test_resize_keeps_size_grey_and_refuses_nonsense(photo):
    assert resize(photo, 512, 512) is photo
    grey = to_grey(photo)
    assert resize(grey, 100, 50).shape == (50, 100)
    flat = np.full((30, 40, 3), 77, np.uint8)
    assert (resize(flat, 17, 13) == 77).all() and (resize(flat, 91, 75) == 77).all()
    with pytest.raises(ValueError, match="0x5"):
        resize(photo, 0, 5)


@pytest.mark.parametrize("side", [60, 75, 100, 127, 128, 200, 400])
def test_blur_measure_matches_opencv_at_every_face_size(photo, side):
    # Face crops are enlarged (below 128 px) or shrunk to SHARPNESS_SIZE first; both ways agree.
    crop = to_grey(photo)[40 : 40 + side, 150 : 150 + side]
    size = (SHARPNESS_SIZE, SHARPNESS_SIZE)
    reference = cv2.Laplacian(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), cv2.CV_64F).var()
    assert laplacian_variance(resize(crop, *size)) == pytest.approx(reference, rel=0.02)


def test_face_sharpness_and_detection_are_unchanged_without_opencv(photo):
    analyzer = FaceAnalyzer()
    box = analyzer.detect(photo)[0]
    crop = cv2.cvtColor(photo[box.top : box.bottom, box.left : box.right], cv2.COLOR_RGB2GRAY)
    size = (SHARPNESS_SIZE, SHARPNESS_SIZE)
    reference = cv2.Laplacian(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), cv2.CV_64F).var()
    assert face_sharpness(photo, box) == pytest.approx(reference, rel=0.02)


def write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_load_image_gives_rgb_for_every_layout(tmp_path, photo):
    rgb = photo[:20, :30]
    assert np.array_equal(load_image(write(tmp_path / "rgb.png", rgb)), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)])
    assert np.array_equal(load_image(write(tmp_path / "rgba.png", rgba)), rgb)  # alpha dropped, not blended
    grey = rgb[..., 0]
    assert np.array_equal(load_image(write(tmp_path / "grey.png", grey)), np.dstack([grey] * 3))
    wide = np.array([[0, 255, 256, 65535]], np.uint16)
    assert load_image(write(tmp_path / "wide.png", wide))[0, :, 0].tolist() == [0, 0, 1, 255]  # the high byte
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    assert load_image(tmp_path / "palette.gif").shape == (20, 30, 3)
    for suffix in (".bmp", ".tiff", ".ppm"):
        path = write(tmp_path / f"rgb{suffix}", rgb)
        assert np.array_equal(load_image(path), rgb), suffix  # lossless formats come back exactly
    assert load_image(write(tmp_path / "rgb.webp", rgb)).shape == (20, 30, 3)


def test_load_image_decodes_jpeg_like_opencv(tmp_path, photo):
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo).save(path, quality=85)
    assert np.array_equal(load_image(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


def test_load_image_errors(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ValueError, match="cannot decode image .*notes.jpg"):
        load_image(tmp_path / "notes.jpg")
    good = tmp_path / "cut.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="float"):
        load_image(write(tmp_path / "float.tiff", np.zeros((4, 4), np.float32), "F"))
