"""Unknown-face snapshots: private JPEGs, retention by count and age, only our own files ever deleted."""

import os
import stat

import numpy as np
import pytest

from blindgate.device.snapshots import SNAPSHOT_NAME, SnapshotError, SnapshotStore, jpeg_encoder, open_snapshots
from blindgate.shared.config import DeviceConfig, SnapshotConfig

FRAME = np.zeros((48, 64, 3), dtype=np.uint8)
DAY = 86400.0


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


def fake_jpeg(rgb):
    return b"\xff\xd8fake\xff\xd9"


def test_real_encoder_writes_a_jpeg_owner_only(tmp_path):
    encode = jpeg_encoder()
    if encode is None:
        pytest.skip("neither Pillow nor OpenCV installed")
    store = SnapshotStore(tmp_path / "snaps", keep=5, max_age_s=DAY, encode=encode)
    name = store.save(FRAME)
    path = tmp_path / "snaps" / name
    assert SNAPSHOT_NAME.fullmatch(name) and path.read_bytes()[:2] == b"\xff\xd8"  # JPEG SOI marker
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "snaps").stat().st_mode) == 0o700


def test_keeps_at_most_the_newest_count(tmp_path):
    clock = Clock()
    store = SnapshotStore(tmp_path, keep=3, max_age_s=DAY, encode=fake_jpeg, clock=clock)
    names = []
    for _ in range(5):
        names.append(store.save(FRAME))
        clock.now += 1
    assert len(set(names)) == 5
    assert [p.name for p in store.files()] == names[-3:]


def test_same_millisecond_gets_distinct_names(tmp_path):
    store = SnapshotStore(tmp_path, keep=10, max_age_s=DAY, encode=fake_jpeg, clock=Clock())
    assert len({store.save(FRAME) for _ in range(3)}) == 3 and len(store.files()) == 3


def test_old_snapshots_expire_and_other_files_are_never_touched(tmp_path):
    clock = Clock()
    (tmp_path / "holiday.jpg").write_bytes(b"mine")
    (tmp_path / "unknown-notes.txt").write_text("mine too")
    store = SnapshotStore(tmp_path, keep=100, max_age_s=2 * DAY, encode=fake_jpeg, clock=clock)
    old = tmp_path / store.save(FRAME)
    os.utime(old, (clock.now - 3 * DAY, clock.now - 3 * DAY))
    fresh = store.save(FRAME)  # each save prunes
    assert not old.exists() and [p.name for p in store.files()] == [fresh]
    assert (tmp_path / "holiday.jpg").exists() and (tmp_path / "unknown-notes.txt").exists()
    for p in tmp_path.iterdir():
        os.utime(p, (clock.now - 5 * DAY, clock.now - 5 * DAY))
    SnapshotStore(tmp_path, keep=100, max_age_s=2 * DAY, encode=fake_jpeg, clock=clock)  # and so does the start
    assert store.files() == [] and (tmp_path / "holiday.jpg").exists()


def test_a_failing_encoder_or_disk_never_raises(tmp_path):
    def broken(rgb):
        raise OSError("disk full")

    assert SnapshotStore(tmp_path, keep=1, max_age_s=DAY, encode=broken).save(FRAME) is None
    assert SnapshotStore(tmp_path, keep=1, max_age_s=DAY, encode=None).save(FRAME) is None  # no encoder: none


def test_retention_is_required(tmp_path):
    with pytest.raises(SnapshotError):
        SnapshotStore(tmp_path, keep=0, max_age_s=DAY, encode=fake_jpeg)
    with pytest.raises(SnapshotError):
        SnapshotStore(tmp_path, keep=5, max_age_s=0, encode=fake_jpeg)


def test_off_by_default_and_inside_the_state_dir_when_on(tmp_path):
    assert open_snapshots(DeviceConfig(state_dir=str(tmp_path))) is None
    store = open_snapshots(DeviceConfig(state_dir=str(tmp_path), snapshots=SnapshotConfig(enabled=True)), encode=fake_jpeg)
    assert store is not None and store.folder == tmp_path / "snapshots" and store.keep == 100


@pytest.mark.parametrize("maker", ["_pil_encoder", "_cv2_encoder"])
def test_both_encoders_keep_the_colours(maker):
    import io

    from blindgate.device import snapshots

    pytest.importorskip("PIL")
    pytest.importorskip("cv2" if maker == "_cv2_encoder" else "PIL")
    from PIL import Image

    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[..., 0] = 220
    decoded = np.asarray(Image.open(io.BytesIO(getattr(snapshots, maker)()(red))).convert("RGB"))
    assert decoded[..., 0].mean() > 180 and decoded[..., 2].mean() < 40  # RGB stays RGB (OpenCV wants BGR)
