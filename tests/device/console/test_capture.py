"""Enrolling at the door's camera from the console: frames diverted from the door, advice per frame, one enrollment at a time.

No dlib: a scripted face finder says which faces each frame shows (the real size and sharpness rules of
FrameCollector judge them), a fake People records what would be enrolled, and the clock is ours. The door
must get its frames back in every ending (done, failed, timed out, cancelled) and nothing is enrolled
unless enough good frames came in.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from blindgate.device.console.capture import CAPTURE_TIMEOUT_S, CameraEnrollment, CaptureBusy, CaptureState
from blindgate.device.console.live import Gate, LiveView
from blindgate.device.enrollment import EnrollmentError
from blindgate.device.faces import FaceBox, FaceConfig
from blindgate.shared.errors import BlindgateError

SUBJECT = "ab" * 16
GOOD_BOX = FaceBox(top=40, right=180, bottom=180, left=40)  # 140 px wide: above min_face_px
SMALL_BOX = FaceBox(top=40, right=70, bottom=70, left=40)  # 30 px
OTHER_BOX = FaceBox(top=40, right=300, bottom=160, left=180)
SHARP = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)  # noise: a high Laplacian variance
BLURRY = np.full((240, 320, 3), 100, dtype=np.uint8)  # flat: sharpness 0


class ScriptedFinder:
    """A FaceFinder whose detect() returns the next scripted list of boxes; embed() a fixed vector per call."""

    def __init__(self, script: list[list[FaceBox]] | None = None) -> None:
        self.config = FaceConfig()
        self.script = list(script or [])
        self.embedded: list[np.ndarray] = []

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        return self.script.pop(0) if self.script else [GOOD_BOX]

    def embed(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray:
        vector = np.full(128, 0.01 * (len(self.embedded) + 1))
        self.embedded.append(vector)
        return vector

    def analyze(self, rgb: np.ndarray) -> None:  # the agent's analyzer has it; the capture must not use it
        raise AssertionError("a capture must not analyse frames for the door")


class FakePeople:
    """Records enroll() calls; `error` makes it raise, `gate` makes it wait (the cloud being slow)."""

    def __init__(self, error: Exception | None = None, gate: threading.Event | None = None, notes: tuple[str, ...] = ()) -> None:
        self.calls: list[dict] = []
        self.error, self.gate, self.notes = error, gate, notes

    def enroll(self, name, faces, add_to=None, say=print):
        self.calls.append({"name": name, "faces": list(faces), "add_to": add_to})
        if self.gate is not None:
            assert self.gate.wait(5)
        for note in self.notes:
            say(note)
        if self.error is not None:
            raise self.error
        return {"subject": SUBJECT, "name": name, "faces": len(faces), "photos": len(faces)}


@pytest.fixture
def clock():
    return SimpleNamespace(now=1000.0)


@pytest.fixture
def door():
    return SimpleNamespace(analyzer=ScriptedFinder(), divert=None)


def capture(door, people, clock, frames=3, live=None, **kwargs) -> CameraEnrollment:
    return CameraEnrollment(door, people, "Alice", frames, live or LiveView(), clock=lambda: clock.now, **kwargs)  # type: ignore[arg-type]


def wait_until_settled(enrollment: CameraEnrollment, timeout: float = 5.0) -> dict:
    """Poll status() until the enrollment thread has finished (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = enrollment.status()
        if status["state"] not in ("collecting", "enrolling"):
            return status
        time.sleep(0.01)
    raise AssertionError(f"still {enrollment.status()['state']} after {timeout} s")


def test_start_takes_the_frames_and_a_second_capture_is_refused(door, clock):
    first = capture(door, FakePeople(), clock)
    first.start()
    assert door.divert == first.offer and first.active
    second = capture(door, FakePeople(), clock)
    with pytest.raises(CaptureBusy, match="another enrollment") as refused:
        second.start()
    assert isinstance(refused.value, BlindgateError)
    assert door.divert == first.offer  # the running capture keeps the camera
    first.cancel()
    assert door.divert is None
    second.start()  # positive control: once the first has ended, another may run
    assert door.divert == second.offer


def test_a_door_without_a_face_finder_cannot_enroll(clock):
    for analyzer in (None, SimpleNamespace(analyze=lambda rgb: None)):
        with pytest.raises(BlindgateError, match="no face analyzer"):
            capture(SimpleNamespace(analyzer=analyzer, divert=None), FakePeople(), clock)


def test_each_frame_gets_its_advice_and_the_progress_is_shown(door, clock):
    door.analyzer.script = [[], [GOOD_BOX, OTHER_BOX], [SMALL_BOX], [GOOD_BOX], [GOOD_BOX]]
    live = LiveView()
    people = FakePeople()
    enrollment = capture(door, people, clock, live=live)
    enrollment.start()
    expected = [
        (BLURRY, "look at the camera", Gate.NO_FACE, (), 0),
        (SHARP, "only the person enrolling may be in view", Gate.SEVERAL_FACES, (GOOD_BOX, OTHER_BOX), 0),
        (SHARP, "step closer", Gate.TOO_SMALL, (SMALL_BOX,), 0),
        (BLURRY, "hold still", Gate.TOO_BLURRY, (GOOD_BOX,), 0),
        (SHARP, "good, hold still", Gate.GOOD, (GOOD_BOX,), 1),
    ]
    for n, (rgb, advice, gate, boxes, good) in enumerate(expected, 1):
        enrollment.offer(rgb)
        status = enrollment.status()
        assert (status["state"], status["advice"], status["good"], status["wanted"]) == ("collecting", advice, good, 3)
        shown = live.current()
        assert shown is not None and shown.seq == n and shown.rgb is rgb
        assert (shown.gate, shown.boxes, shown.caption) == (gate, boxes, f"{advice} ({good} of 3)")
    assert door.divert == enrollment.offer and people.calls == []  # still collecting: the door waits, nothing enrolled
    assert len(door.analyzer.embedded) == 1  # only the good frame was embedded


def test_enough_good_frames_give_the_door_its_frames_back_and_enroll_once(door, clock):
    enrolled: list[dict] = []
    people = FakePeople(notes=("2 face(s) of one person", "warning: consider the claimed-identity mode"))
    enrollment = capture(door, people, clock, add_to="s-old", when_enrolled=enrolled.append)
    enrollment.start()
    for _ in range(3):
        assert door.divert == enrollment.offer
        enrollment.offer(SHARP)
    assert door.divert is None  # released on the third good frame, before the cloud is asked
    status = wait_until_settled(enrollment)
    assert status["state"] == "done" and status["subject"] == SUBJECT and status["good"] == 3 and status["advice"] == ""
    assert status["message"] == "enrolled Alice. warning: consider the claimed-identity mode"  # warnings only, not every note
    assert len(people.calls) == 1
    call = people.calls[0]
    assert call["name"] == "Alice" and call["add_to"] == "s-old" and len(call["faces"]) == 3
    for face, vector in zip(call["faces"], door.analyzer.embedded, strict=True):
        assert np.array_equal(face.embedding, vector) and face.box == GOOD_BOX
    assert enrolled == [{"subject": SUBJECT, "name": "Alice", "faces": 3, "photos": 3}]
    assert not enrollment.active
    # a frame the agent had already taken when the divert was released changes nothing
    enrollment.offer(SHARP)
    assert len(people.calls) == 1 and len(door.analyzer.embedded) == 3 and enrollment.status()["state"] == "done"


def test_the_door_keeps_working_while_the_cloud_is_asked(door, clock):
    slow = threading.Event()
    people = FakePeople(gate=slow)
    enrollment = capture(door, people, clock, frames=1)
    enrollment.start()
    enrollment.offer(SHARP)
    try:
        assert enrollment.status()["state"] == "enrolling" and enrollment.active and door.divert is None
        enrollment.cancel()  # too late to cancel: the template is on its way
        assert enrollment.status()["state"] == "enrolling"
    finally:
        slow.set()
    assert wait_until_settled(enrollment)["state"] == "done"


def test_a_refused_enrollment_fails_with_the_reason(door, clock):
    refusal = EnrollmentError("this face is already enrolled as 'Bob' (s-bob): remove the extra ones. Nothing was enrolled")
    people = FakePeople(error=refusal)
    enrollment = capture(door, people, clock, frames=2)
    enrollment.start()
    enrollment.offer(SHARP)
    enrollment.offer(SHARP)
    status = wait_until_settled(enrollment)
    assert status["state"] == "failed" and status["message"] == str(refusal) and status["subject"] is None
    assert door.divert is None and len(people.calls) == 1


def test_an_unexpected_error_fails_without_its_text_reaching_the_page(door, clock):
    people = FakePeople(error=RuntimeError("secret internals /var/lib/blindgate/key"))
    enrollment = capture(door, people, clock, frames=1)
    enrollment.start()
    enrollment.offer(SHARP)
    status = wait_until_settled(enrollment)
    assert status["state"] == "failed" and status["message"] == "internal error: RuntimeError"


def test_too_few_good_frames_in_time_fail_and_enroll_nothing(door, clock):
    door.analyzer.script = [[GOOD_BOX], [], []]
    people = FakePeople()
    enrollment = capture(door, people, clock, timeout_s=30.0)
    enrollment.start()
    enrollment.offer(SHARP)  # one good
    clock.now += 29.0
    enrollment.offer(SHARP)  # no face, within the time limit: still collecting (positive control)
    assert enrollment.status()["state"] == "collecting" and door.divert == enrollment.offer
    clock.now += 2.0
    enrollment.offer(SHARP)  # no face, past the limit
    status = enrollment.status()
    assert status["state"] == "failed" and status["message"] == "only 1 of 3 good frames in 30 s: nothing was enrolled"
    assert door.divert is None and not enrollment.active
    enrollment.offer(SHARP)  # a late frame restarts nothing
    time.sleep(0.05)
    assert people.calls == [] and enrollment.status()["state"] == "failed"


def test_status_fails_a_capture_past_its_time_limit_even_without_frames(door, clock):
    people = FakePeople()
    enrollment = capture(door, people, clock)
    enrollment.start()
    clock.now += CAPTURE_TIMEOUT_S + 1  # within the grace: frames may still be on their way
    assert enrollment.status()["state"] == "collecting" and door.divert == enrollment.offer
    clock.now += 2
    status = enrollment.status()
    assert status["state"] == "failed" and "no camera frames" in status["message"] and "nothing was enrolled" in status["message"]
    assert door.divert is None and people.calls == []


def test_cancel_gives_the_frames_back_and_enrolls_nothing(door, clock):
    people = FakePeople()
    enrollment = capture(door, people, clock, frames=2)
    enrollment.start()
    enrollment.offer(SHARP)
    enrollment.cancel()
    status = enrollment.status()
    assert status["state"] == str(CaptureState.CANCELLED) and status["message"] == "cancelled: nothing was enrolled"
    assert door.divert is None
    enrollment.offer(SHARP)  # would have completed it
    time.sleep(0.05)
    assert people.calls == [] and enrollment.status()["state"] == "cancelled"


def test_ending_a_capture_never_releases_another_ones_divert(door, clock):
    first = capture(door, FakePeople(), clock)
    first.start()
    first.cancel()
    second = capture(door, FakePeople(), clock)
    second.start()
    first.offer(SHARP)  # a stale frame for the cancelled capture
    first.cancel()
    assert door.divert == second.offer
