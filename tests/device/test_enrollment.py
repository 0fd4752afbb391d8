"""Enrollment integrity (device/enrollment.py): one person per template, one face per photo, nobody twice.

Pure logic on synthetic embeddings and an in-memory cloud first; then real photos from
../shared/faces through `blindgate-device enroll` against the real cloud (skipped without them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from blindgate.device.cli import main as device_main
from blindgate.device.cloud_client import CloudError
from blindgate.device.enrollment import (
    ENROLLMENT_PAIR_BOUND,
    RECOGNITION_FLOOR,
    EnrollFace,
    EnrollmentError,
    Site,
    agreeing_faces,
    check_one_person,
    duplicate_threshold,
    enroll,
    faces_from_frames,
    faces_from_photos,
    grown_template,
    parse_face_choice,
    pick_face,
    recognition_warning,
    template_from,
)
from blindgate.device.faces import FaceBox, FaceConfig
from blindgate.device.labels import LabelCipher
from blindgate.device.operating_point import operating_point
from blindgate.device.sealing import SealedTemplate, TemplateSealer
from blindgate.device.site_state import SiteState
from blindgate.device.state import DeviceState
from blindgate.shared.config import DecisionConfig, DeviceConfig, load_config
from blindgate.shared.engine import generate_site_keys
from blindgate.shared.launch import write_device_config

SITE = "home"


def person(seed: int) -> np.ndarray:
    """A synthetic identity: a random point with the spread of dlib embeddings (different people ~0.9+ apart)."""
    return np.random.default_rng(seed).normal(0, 0.08, 128)


def photos_of(centre: np.ndarray, count: int, seed: int, spread: float = 0.015, prefix: str = "p") -> list[EnrollFace]:
    """Photos of one person: each within ~0.17 of the centre, so pairs ~0.24 apart (well under the bound)."""
    rng = np.random.default_rng(seed)
    return [EnrollFace(f"{prefix}{n}.jpg", centre + rng.normal(0, spread, 128)) for n in range(1, count + 1)]


# -- one person, one face --------------------------------------------------------------------------


def test_photos_of_one_person_give_their_mean():
    faces = photos_of(person(1), 3, seed=2)
    check_one_person(faces)  # positive control
    assert np.allclose(template_from([f.embedding for f in faces]), np.mean([f.embedding for f in faces], axis=0))


def test_two_people_under_one_name_are_refused_naming_the_photos():
    faces = photos_of(person(1), 1, seed=2, prefix="obama") + photos_of(person(3), 1, seed=4, prefix="biden")
    with pytest.raises(EnrollmentError) as caught:
        check_one_person(faces)
    assert "obama1.jpg" in str(caught.value) and "biden1.jpg" in str(caught.value)


def test_the_odd_photo_out_is_named():
    faces = photos_of(person(1), 3, seed=2) + photos_of(person(5), 1, seed=6, prefix="stranger")
    with pytest.raises(EnrollmentError, match=r"stranger1\.jpg does not look like the others"):
        check_one_person(faces)


def test_the_bound_is_pairwise_not_to_the_mean():
    # Three photos each 0.3 from their mean but 0.52..0.6 from one another: the old mean rule (0.6) let
    # such spreads through; pairs over the bound are refused, pairs just under it pass.
    centre = person(7)
    axes = np.eye(128)[:3]
    close = [EnrollFace(f"c{n}", centre + 0.26 * axes[n] * np.sqrt(2)) for n in range(2)]  # 0.52 apart
    check_one_person(close)
    far = [EnrollFace(f"f{n}", centre + 0.3 * axes[n] * np.sqrt(2)) for n in range(2)]  # 0.6 apart
    with pytest.raises(EnrollmentError):
        check_one_person(far)
    assert ENROLLMENT_PAIR_BOUND < 0.6


def test_no_face_and_nan_are_refused():
    with pytest.raises(EnrollmentError, match="no usable face"):
        check_one_person([])
    bad = [EnrollFace("a", person(1)), EnrollFace("b", np.full(128, np.nan))]
    with pytest.raises(EnrollmentError):
        check_one_person(bad)


BOXES = [FaceBox(100, 900, 300, 700), FaceBox(50, 300, 150, 200)]  # largest first, as detect() returns them


def test_several_faces_need_a_choice_numbered_left_to_right():
    with pytest.raises(EnrollmentError) as caught:
        pick_face(BOXES, None, "scene.jpg")
    message = str(caught.value)
    assert "scene.jpg shows 2 faces" in message and "face 1: at x=200, y=50, 100x100 px" in message
    assert "face 2: at x=700, y=100, 200x200 px" in message and "--face" in message
    assert pick_face(BOXES, 1, "scene.jpg") == BOXES[1]  # leftmost
    assert pick_face(BOXES, 2, "scene.jpg") == BOXES[0]
    assert pick_face(BOXES, "largest", "scene.jpg") == BOXES[0]
    assert pick_face(BOXES[1:], None, "one.jpg") == BOXES[1]  # one face needs no choice
    with pytest.raises(EnrollmentError, match="only 2 faces"):
        pick_face(BOXES, 3, "scene.jpg")


def test_face_choice_parsing():
    assert parse_face_choice(None) is None
    assert parse_face_choice("largest") == "largest"
    assert parse_face_choice("2") == 2
    for bad in ("0", "-1", "left", ""):
        with pytest.raises(EnrollmentError):
            parse_face_choice(bad)


class FakeFinder:
    """Faces by frame: each 'image' is an int indexing `scenes` (boxes) with a fixed embedding per box."""

    config = FaceConfig(min_face_px=60, min_sharpness=0.0)

    def __init__(self, scenes: list[list[FaceBox]]) -> None:
        self.scenes = scenes

    def detect(self, rgb):
        return list(self.scenes[int(rgb[0, 0, 0])])

    def embed(self, rgb, box):
        return person(box.left)


def image(n: int) -> np.ndarray:
    rgb = np.zeros((400, 1000, 3), dtype=np.uint8)
    rgb[0, 0, 0] = n
    return rgb


def test_photos_skip_poor_faces_and_refuse_crowds():
    small = FaceBox(0, 40, 40, 0)
    finder = FakeFinder([[], [small], [BOXES[0]], BOXES])
    said: list[str] = []
    faces = faces_from_photos(finder, [("none.jpg", image(0)), ("tiny.jpg", image(1)), ("ok.jpg", image(2))], say=said.append)
    assert [f.source for f in faces] == ["ok.jpg"]
    assert any("none.jpg: no face" in s for s in said) and any("tiny.jpg: face too small" in s for s in said)
    with pytest.raises(EnrollmentError, match="crowd.jpg shows 2 faces"):
        faces_from_photos(finder, [("crowd.jpg", image(3))], say=said.append)
    chosen = faces_from_photos(finder, [("crowd.jpg", image(3))], choice=1, say=said.append)
    assert np.array_equal(chosen[0].embedding, person(BOXES[1].left))


def test_camera_frames_with_several_faces_are_skipped():
    finder = FakeFinder([BOXES, [BOXES[0]]])
    said: list[str] = []
    frames = [image(0), image(1), image(0), image(1)]
    faces = faces_from_frames(finder, frames, wanted=2, say=said.append)
    assert [f.source for f in faces] == ["frame 2", "frame 4"]
    assert sum("2 faces in view" in s for s in said) == 2
    with pytest.raises(EnrollmentError, match="only 0 of 2 good frames"):
        faces_from_frames(finder, [image(0)] * 10, wanted=2, patience=3, say=said.append)


def test_progress_per_photo_and_per_camera_frame():
    finder = FakeFinder([[], [BOXES[0]]])
    said: list[str] = []
    faces_from_photos(finder, [("none.jpg", image(0)), ("ok.jpg", image(1))], say=said.append)
    assert said == ["skipped none.jpg: no face", f"ok.jpg: found a face ({BOXES[0].width}x{BOXES[0].height} px)"]
    said.clear()
    frames = [image(0)] * 19 + [image(1), image(0), image(1)]  # nobody for 19 frames, then good ones
    faces_from_frames(finder, frames, wanted=2, say=said.append)
    assert said == [
        "skipped frame 10: no face (0 of 2 good frames so far)",
        "frame 20: good face, 1 of 2",
        "frame 22: good face, 2 of 2",
    ]


def test_enroll_says_what_it_is_doing(site):
    said: list[str] = []
    enroll(site, "Gil", photos_of(person(53), 2, seed=1), say=said.append)
    assert any("checking they are not enrolled already" in s for s in said)
    assert any("encrypting and uploading" in s for s in said)


# -- adding photos, duplicates, the warning ----------------------------------------------------------


def sealed_of(subject: str, template: np.ndarray, label: str, photos: int) -> SealedTemplate:
    return SealedTemplate(subject=subject, key_id="k", version=1, label=label, template=template, photos=photos)


def test_grown_template_weighs_by_photo_count():
    centre = person(11)
    old = photos_of(centre, 3, seed=12)
    existing = sealed_of("a" * 32, np.mean([f.embedding for f in old], axis=0), "Ann", 3)
    new = photos_of(centre, 2, seed=13, prefix="n")
    template, photos = grown_template(existing, new)
    assert photos == 5
    assert np.allclose(template, np.mean([f.embedding for f in old + new], axis=0))
    legacy = sealed_of("a" * 32, existing.template, "Ann", 0)  # a BGT1 blob: no count, weighs as one photo
    assert grown_template(legacy, new)[1] == 3
    with pytest.raises(EnrollmentError, match=r"x1\.jpg .*'Ann'"):
        grown_template(existing, photos_of(person(99), 1, seed=1, prefix="x"))


def test_duplicate_threshold_is_the_doors_plus_the_margin():
    decision = DecisionConfig()
    assert duplicate_threshold(decision, 3) == pytest.approx(operating_point(decision, 3, "identify").threshold + 0.05)
    assert duplicate_threshold(DecisionConfig(threshold=0.5, doubt_margin=0.1), 3) == pytest.approx(0.6)


def test_recognition_warning_spares_a_household_and_fires_for_a_crowd():
    decision = DecisionConfig()
    for size in range(1, 11):
        assert recognition_warning(decision, size) is None, size
    warning = recognition_warning(decision, 5000)  # positive control
    assert warning is not None and 'mode = "either"' in warning
    assert operating_point(decision, 5000, "identify").expected_true_open < RECOGNITION_FLOOR
    assert recognition_warning(DecisionConfig(mode="verify"), 5000) is None


class FakeCloud:
    """The admin API's enrollment surface, in memory; records the order of changes."""

    def __init__(self) -> None:
        self.subjects_: dict[str, tuple[bytes, bytes]] = {}  # subject -> (label, sealed)
        self.log: list[tuple[str, str]] = []
        self.fail_remove = False
        self.fail_enroll = False
        self.version = 0

    def subjects(self) -> dict:
        return {"gallery_version": self.version, "subjects": [{"subject": s} for s in self.subjects_]}

    def sealed(self, subject: str) -> bytes:
        if subject not in self.subjects_:
            raise CloudError(404, "no such subject")
        return self.subjects_[subject][1]

    def enroll(self, enrollment, label, key_id, subject=None, sealed=None) -> dict:
        if self.fail_enroll:
            raise CloudError(0, "cloud unreachable")
        self.subjects_[subject] = (label, sealed)
        self.version += 1
        self.log.append(("enroll", subject))
        return {"subject": subject, "block": 0, "slot": len(self.subjects_) - 1, "gallery_version": self.version}

    def remove(self, subject: str) -> dict:
        if self.fail_remove:
            raise CloudError(0, "cloud unreachable")
        del self.subjects_[subject]
        self.version += 1
        self.log.append(("remove", subject))
        return {"gallery_version": self.version}


@pytest.fixture(scope="module")
def keys():
    return generate_site_keys()


@pytest.fixture
def site(tmp_path, keys):
    TemplateSealer.create_key(tmp_path)
    LabelCipher.create_key(tmp_path)
    return Site(
        keys=keys,
        sealer=TemplateSealer.load(tmp_path, SITE),
        labels=LabelCipher.load(tmp_path, SITE),
        client=FakeCloud(),  # type: ignore[arg-type]
        site_state=SiteState(tmp_path, SITE),
        decision=DecisionConfig(),
    )


def quiet(_: str) -> None:
    pass


def test_enroll_refuses_a_face_already_enrolled_with_its_name(site):
    ann = person(21)
    first = enroll(site, "Ann", photos_of(ann, 2, seed=1), say=quiet)  # positive control
    assert first["photos"] == 2 and first["faces"] == 2
    enroll(site, "Bob", photos_of(person(22), 2, seed=2), say=quiet)  # someone else: accepted
    with pytest.raises(EnrollmentError, match=rf"already enrolled as 'Ann' \({first['subject']}\).*--add-to"):
        enroll(site, "Annie", photos_of(ann, 2, seed=3), say=quiet)
    assert len(site.client.subjects_) == 2  # nothing enrolled by the refusal


def test_a_subject_whose_sealed_template_does_not_open_is_named_not_skipped(site):
    ann = enroll(site, "Ann", photos_of(person(21), 2, seed=1), say=quiet)["subject"]
    label, _ = site.client.subjects_[ann]
    site.client.subjects_[ann] = (label, b"BGT2" + bytes(60))  # a cloud that lost or altered the blob
    with pytest.raises(EnrollmentError, match=rf"{ann}.*Nothing was enrolled"):
        enroll(site, "Annie", photos_of(person(21), 2, seed=3), say=quiet)
    site.site_state.deny([ann])  # removed at this site: no longer compared (or needed)
    enroll(site, "Annie", photos_of(person(21), 2, seed=3), say=quiet)


def test_add_to_enrolls_the_new_template_before_removing_the_old(site):
    centre = person(31)
    old = enroll(site, "Cat", photos_of(centre, 2, seed=1), say=quiet)["subject"]
    moved: list[tuple[str, str]] = []
    result = enroll(
        site, "Cat", photos_of(centre, 3, seed=2), add_to="Cat", carry_over=lambda a, b: moved.append((a, b)), say=quiet
    )
    new = result["subject"]
    assert result["replaces"] == old and result["photos"] == 5 and new != old
    assert site.client.log[-2:] == [("enroll", new), ("remove", old)]
    assert moved == [(old, new)] and site.site_state.is_denied(old) and not site.site_state.is_denied(new)
    opened = site.sealer.open(site.client.sealed(new), new, site.keys.key_id)
    assert opened.photos == 5 and opened.label == "Cat"


def test_add_to_refuses_another_persons_photos_and_keeps_everything(site):
    old = enroll(site, "Cat", photos_of(person(31), 2, seed=1), say=quiet)["subject"]
    with pytest.raises(EnrollmentError, match="do\\(es\\) not look like 'Cat'"):
        enroll(site, "Cat", photos_of(person(32), 2, seed=2), add_to=old, say=quiet)
    with pytest.raises(EnrollmentError, match="no enrolled subject 'Dog'"):
        enroll(site, "Cat", photos_of(person(31), 2, seed=2), add_to="Dog", say=quiet)
    assert list(site.client.subjects_) == [old] and not site.site_state.is_denied(old)


def test_add_to_a_failing_cloud_loses_nothing(site):
    centre = person(41)
    old = enroll(site, "Dan", photos_of(centre, 2, seed=1), say=quiet)["subject"]
    site.client.fail_enroll = True  # the new template never arrives: the old one stays, not denied
    with pytest.raises(CloudError):
        enroll(site, "Dan", photos_of(centre, 2, seed=2), add_to=old, say=quiet)
    assert list(site.client.subjects_) == [old] and not site.site_state.is_denied(old)
    site.client.fail_enroll, site.client.fail_remove = False, True  # enrolled, but the old one cannot be removed
    with pytest.raises(EnrollmentError, match=rf"new template \w+ is enrolled.*remove {old}"):
        enroll(site, "Dan", photos_of(centre, 2, seed=2), add_to=old, say=quiet)
    assert len(site.client.subjects_) == 2 and old in site.client.subjects_  # two templates of Dan, none lost
    assert site.site_state.is_denied(old)  # and the door no longer uses the old one
    # The denied leftover is not compared any more: adding to "Dan" now means the new template.
    site.client.fail_remove = False
    again = enroll(site, "Dan", photos_of(centre, 2, seed=3), add_to="Dan", say=quiet)
    assert again["replaces"] != old and again["photos"] == 6


def test_enroll_warns_for_a_large_gallery(site, monkeypatch):
    said: list[str] = []
    site = Site(**{**site.__dict__, "decision": DecisionConfig(max_false_open=1e-6)})
    enroll(site, "Eve", photos_of(person(51), 2, seed=1), say=said.append)
    assert any('mode = "either"' in s for s in said)
    said.clear()
    site = Site(**{**site.__dict__, "decision": DecisionConfig()})  # positive control: default, one person
    enroll(site, "Fay", photos_of(person(52), 2, seed=1), say=said.append)
    assert said and not any("mode =" in s for s in said)  # progress only


# -- real photos, real cloud -------------------------------------------------------------------------


@pytest.fixture
def door(tmp_path, cloud, mqtt_broker, faces_dir):
    config = write_device_config(
        tmp_path / "door.toml",
        site=tmp_path.name,
        cloud_url=cloud.url,
        broker=mqtt_broker,
        state_dir=tmp_path / "door",
        camera="none",
    )  # one site per test: the cloud is shared by the module
    assert device_main(["--config", str(config), *cloud.init_args()]) == 0
    return config, faces_dir


def run(config, *args: str, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = device_main(["--config", str(config), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_real_photos_of_two_people_under_one_name_are_refused(door, capsys):
    config, faces = door
    people = faces / "people"
    obama, biden = str(people / "obama/obama.jpg"), str(people / "biden/biden.jpg")
    code, _, err = run(config, "enroll", "obama", obama, biden, capsys=capsys)
    assert code == 1 and "obama.jpg" in err and "biden.jpg" in err and "one person" in err
    code, out, err = run(config, "enroll", "obama", obama, str(people / "obama/obama2.jpg"), capsys=capsys)
    assert code == 0, err  # positive control
    assert json.loads(out)["faces"] == 2


def test_real_scene_needs_a_face_choice_and_a_known_face_is_refused(door, capsys):
    config, faces = door
    scene = str(faces / "scenes/kit_with_rose.jpg")  # left to right: rose_leslie, kit_harington
    code, _, err = run(config, "enroll", "Kit", scene, capsys=capsys)
    assert code == 1 and "shows 2 faces" in err and "face 1:" in err and "face 2:" in err
    code, out, err = run(config, "enroll", "Kit", scene, "--face", "2", capsys=capsys)
    assert code == 0, err
    kit = json.loads(out)["subject"]
    # Kit again, from his own photos, under another name: refused, naming the enrolled Kit.
    kit_photos = [str(faces / "people/kit_harington" / f) for f in ("kit1.jpg", "kit3.jpg")]
    code, _, err = run(config, "enroll", "Kit Harington", *kit_photos, capsys=capsys)
    assert code == 1 and "already enrolled as 'Kit'" in err and kit in err
    # Positive control: Rose (the scene's other face) is someone else.
    code, _, err = run(config, "enroll", "Rose", str(faces / "people/rose_leslie/rose1.jpg"), capsys=capsys)
    assert code == 0, err


def test_real_add_to_replaces_the_template_end_to_end(door, capsys):
    config, faces = door
    kit = faces / "people/kit_harington"
    code, out, err = run(config, "enroll", "Kit", str(kit / "kit1.jpg"), capsys=capsys)
    assert code == 0, err
    old = json.loads(out)["subject"]
    code, out, err = run(config, "enroll", "Kit", str(kit / "kit2.jpg"), str(kit / "kit3.jpg"), "--add-to", "Kit", capsys=capsys)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["replaces"] == old and answer["photos"] == 3
    code, out, _ = run(config, "list", "--json", capsys=capsys)
    listed = json.loads(out)["subjects"]
    assert [(s["subject"], s["name"]) for s in listed] == [(answer["subject"], "Kit")]
    state = DeviceState(load_config(DeviceConfig, config, env={}).state_dir)
    site = load_config(DeviceConfig, config, env={}).site
    assert SiteState(state.dir, site).is_denied(old)
    # Another person's photo cannot be added to Kit.
    code, _, err = run(config, "enroll", "Kit", str(faces / "people/rose_leslie/rose1.jpg"), "--add-to", "Kit", capsys=capsys)
    assert code == 1 and "rose1.jpg" in err and "not look like 'Kit'" in err


def test_list_points_out_a_name_enrolled_twice(monkeypatch, capsys, tmp_path):
    import blindgate.device.cli as cli
    from blindgate.device.people import People, Person

    rows = [Person(s, n, 0) for s, n in (("a" * 32, "Kit"), ("b" * 32, "Rose"), ("c" * 32, "Kit"))]
    monkeypatch.setattr(People, "listing", lambda self: (3, rows))
    monkeypatch.setenv("BLINDGATE_STATE_DIR", str(tmp_path))
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "2 subjects are named 'Kit'" in out and "named 'Rose'" not in out
    rows.pop()  # positive control: no note without a repeated name
    assert cli.main(["list"]) == 0
    assert "note" not in capsys.readouterr().out


def test_camera_enrollment_keeps_the_frames_that_agree_and_skips_the_odd_one():
    """A head turned in one frame puts it further than the pair bound from the rest: the collector leaves it out."""
    base = person(700)
    odd = base.copy()
    odd[0] += ENROLLMENT_PAIR_BOUND + 0.05
    embeddings = iter([odd, base, base + 0.01, base - 0.01, base + 0.02])

    class Turning(FakeFinder):
        def embed(self, rgb, box):
            return next(embeddings)

    faces = faces_from_frames(Turning([[BOXES[0]]]), [image(0)] * 5, wanted=4, say=lambda _: None)
    assert [f.source for f in faces] == ["frame 2", "frame 3", "frame 4", "frame 5"]
    check_one_person(faces)  # what enroll() checks again
    # Control: with all five needed, the odd frame cannot be left out and too few agree.
    embeddings = iter([odd, base, base + 0.01, base - 0.01, base + 0.02])
    with pytest.raises(EnrollmentError, match="only 4 of 5 good frames that agree"):
        faces_from_frames(Turning([[BOXES[0]]]), [image(0)] * 5, wanted=5, patience=1, say=lambda _: None)


def test_agreeing_faces_picks_the_largest_agreeing_group():
    a = person(1)
    far = a.copy()
    far[0] += 1.0
    faces = [EnrollFace(f"f{i}", e) for i, e in enumerate([far, a, a + 0.01, far + 0.01, a - 0.01])]
    assert [f.source for f in agreeing_faces(faces, 3)] == ["f1", "f2", "f4"]
    assert len(agreeing_faces(faces, 10)) == 3
    assert agreeing_faces([], 3) == []
