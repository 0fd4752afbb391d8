"""Enrollment integrity: one person per template, one face per photo, nobody enrolled twice.

A template is the MEAN embedding of every photo (or camera frame) of one enrollment. Three
things could silently make it wrong, and each is refused here, on the device, in plaintext:

* photos of two people under one name (the mean then lies between them and opens for both):
  every PAIR of photos must be within `ENROLLMENT_PAIR_BOUND`; the refusal names the pairs;
* a photo with several faces (the largest is not always the person meant): refused with the
  faces listed, unless the user picks one (`--face N`, numbered left to right, or `largest`);
  camera frames with several faces are skipped;
* a face that is already enrolled (under another name, it would survive that person's removal):
  the new template is compared with every enrolled subject's SEALED template (device/sealing.py,
  opened here with the site's template key; the cloud never sees the comparison) within the
  door's identification threshold for the gallery after this enrollment plus the doubt margin
  (stricter than the door, so a duplicate does not slip through at the edge).

`enroll(..., add_to=SUBJECT)` grows an existing person's template instead: the new photos must
agree with each other and with the stored template, and the new template is the mean over all
photos (the photo count is sealed with the template). The order keeps every stored template
until its replacement is in place: the new template is enrolled under a NEW subject id first,
then the old id is denied on this device (site_state) and removed from the cloud. A crash or a
cloud failure in between leaves two templates of one person (`list` shows the name twice;
`remove OLD_ID` finishes), never none. Per-subject data kept on the device follows through the
`carry_over(old, new)` callback (e.g. credentials); the deny list needs none: a denied subject
cannot be added to.
"""

from __future__ import annotations

import itertools
import secrets
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from blindgate.shared.config import DecisionConfig
from blindgate.shared.engine import SiteKeys, encrypt_enrollment
from blindgate.shared.errors import BlindgateError

from .cloud_client import CloudClient, CloudError
from .faces import FaceBox, FaceConfig, face_sharpness
from .labels import LabelCipher
from .operating_point import Calibration, operating_point
from .sealing import SealedTemplate, SealError, TemplateSealer
from .site_state import SiteState

# The largest distance between two photos of one enrollment. Fitted on lfw-devtrain with the
# embedding cache of every devtrain/devtest image (FaceConfig() defaults, centre face; images
# where no face was found left out): the 0.1% quantile of the 5,837,460 different-person photo
# pairs is 0.538, rounded down to 0.53. At 0.53: devtrain 0.077% of different-person pairs fall
# within it (4,511), 88.4% of same-person pairs pass (1,938 of 2,193); devtest (disjoint people)
# 0.051% (613 of 1,191,762) and 89.1% (871 of 978). LFW pairs span years and lighting; photos
# taken for an enrollment agree better (../shared/faces: same person at most 0.52, different at
# least 0.65; Obama and Biden, the mixed enrollment, are 0.84 apart).
ENROLLMENT_PAIR_BOUND = 0.53
# The largest distance from a new photo to a stored (mean) template, for `--add-to`. A mean sits
# closer to everyone than a photo does, so the pair bound is too loose here (0.20% of impostors).
# Fitted on devtrain with templates that are the mean of two photos of a person (276 people with
# three or more photos, their third photo as the genuine probe, every other person's photo as an
# impostor): the 0.1% quantile is 0.507, rounded down to 0.50. At 0.50: devtrain 0.080% of
# impostor photos within it, 95.3% of genuine photos pass; devtest 0.062% and 94.4% (126 people).
ENROLLMENT_TEMPLATE_BOUND = 0.50
# Per-frame recognition below which enrollment recommends the claimed-identity mode. Each LFW
# same-person pair is a different session, so `expected_true_open` says how often a resident in new
# conditions (light, glasses, a year older) is recognised, and such misses repeat frame after frame:
# below 0.8, more than one such visit in five fails. With mean templates at the default target
# (max_false_open 0.001) it is 0.90 at 10 people, 0.85 at 20, and first falls under 0.8 at 48.
RECOGNITION_FLOOR = 0.8
FACE_CHOICE_LARGEST = "largest"

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class EnrollmentError(BlindgateError, ValueError):
    """An enrollment refused before anything was stored, or stopped with the state explained."""


class FaceFinder(Protocol):
    """What enrollment needs of face analysis (FaceAnalyzer has it): every face, and one face's embedding."""

    config: FaceConfig

    def detect(self, rgb: np.ndarray) -> list[FaceBox]: ...

    def embed(self, rgb: np.ndarray, box: FaceBox) -> np.ndarray: ...


@dataclass(frozen=True)
class EnrollFace:
    """One photo's (or frame's) chosen face."""

    source: str
    embedding: np.ndarray = field(repr=False)
    box: FaceBox | None = None


# -- faces ---------------------------------------------------------------------------------------


def parse_face_choice(text: str | None) -> int | str | None:
    """`--face`: None (refuse several faces), "largest", or a 1-based number counted left to right."""
    if text is None or text == FACE_CHOICE_LARGEST:
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise EnrollmentError(f"--face {text!r}: give a face number (1 = leftmost) or {FACE_CHOICE_LARGEST!r}")


def left_to_right(boxes: list[FaceBox]) -> list[FaceBox]:
    return sorted(boxes, key=lambda b: (b.left + b.right, b.top))


def describe_faces(boxes: list[FaceBox]) -> str:
    """The faces as numbered for `--face`: position of the top-left corner and size, in pixels."""
    return "; ".join(
        f"face {n}: at x={b.left}, y={b.top}, {b.width}x{b.height} px" for n, b in enumerate(left_to_right(boxes), 1)
    )


def pick_face(boxes: list[FaceBox], choice: int | str | None, source: str) -> FaceBox:
    """The face to enroll from a photo; several faces need a choice (the largest is not always the person meant)."""
    if len(boxes) == 1:
        return boxes[0]
    if choice is None:
        raise EnrollmentError(
            f"{source} shows {len(boxes)} faces ({describe_faces(boxes)}): pick one with --face N (numbered left to right) "
            f"or --face {FACE_CHOICE_LARGEST}, or crop the photo"
        )
    if choice == FACE_CHOICE_LARGEST:
        return max(boxes, key=lambda b: b.area)
    assert isinstance(choice, int)
    if choice > len(boxes):
        raise EnrollmentError(f"--face {choice}: {source} shows only {len(boxes)} faces ({describe_faces(boxes)})")
    return left_to_right(boxes)[choice - 1]


def quality_problem(finder: FaceFinder, rgb: np.ndarray, box: FaceBox) -> str | None:
    """Why this face is not good enough to enroll (FaceAnalyzer's size and sharpness rules), or None."""
    cfg = finder.config
    if box.width < cfg.min_face_px:
        return f"face too small ({box.width} px < {cfg.min_face_px} px)"
    sharpness = face_sharpness(rgb, box)
    if sharpness < cfg.min_sharpness:
        return f"too blurry (sharpness {sharpness:.1f} < {cfg.min_sharpness:g})"
    return None


def faces_from_photos(
    finder: FaceFinder, photos: Iterable[tuple[str, np.ndarray]], choice: int | str | None = None, say: Say = _stderr
) -> list[EnrollFace]:
    """One face per photo. A photo without a good face is skipped (said); one with several needs `choice`."""
    found = []
    for source, rgb in photos:
        boxes = finder.detect(rgb)
        if not boxes:
            say(f"skipped {source}: no face")
            continue
        box = pick_face(boxes, choice, source)
        problem = quality_problem(finder, rgb, box)
        if problem:
            say(f"skipped {source}: {problem}")
            continue
        found.append(EnrollFace(source, finder.embed(rgb, box), box))
        say(f"{source}: found a face ({box.width}x{box.height} px)")
    return found


class FrameAdvice(StrEnum):
    """What a camera enrollment tells the person after each frame (the CLI says it, the console shows it)."""

    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    TOO_SMALL = "too_small"
    TOO_BLURRY = "too_blurry"
    GOOD = "good"


ADVICE_TEXT = {
    FrameAdvice.NO_FACE: "look at the camera",
    FrameAdvice.SEVERAL_FACES: "only the person enrolling may be in view",
    FrameAdvice.TOO_SMALL: "step closer",
    FrameAdvice.TOO_BLURRY: "hold still",
    FrameAdvice.GOOD: "good, hold still",
}


@dataclass(frozen=True)
class FrameCheck:
    """One frame's verdict for enrollment: the advice, why, the faces seen, and the progress."""

    advice: FrameAdvice
    reason: str
    boxes: tuple[FaceBox, ...]
    good: int
    wanted: int

    @property
    def text(self) -> str:
        return ADVICE_TEXT[self.advice]


class FrameCollector:
    """Collects `wanted` good single-face frames that agree as one person, with advice after each frame.

    The CLI's `enroll --camera` (faces_from_frames) and the console's live enrollment both feed it,
    so both apply the same rules: one face in view, large and sharp enough (the door's own gates).
    A person turning their head gives the odd frame that sits further than `ENROLLMENT_PAIR_BOUND`
    from the others; rather than refusing the whole enrollment afterwards, the collector keeps the
    last `4 * wanted` good frames and finishes once `wanted` of them agree pairwise (the check
    `enroll` makes again before anything is stored).
    """

    def __init__(self, finder: FaceFinder, wanted: int, patience: int = 20, bound: float = ENROLLMENT_PAIR_BOUND) -> None:
        if wanted < 1:
            raise EnrollmentError("at least one good frame is needed")
        self.finder, self.wanted, self.patience, self.bound = finder, wanted, patience, bound
        self.candidates: list[EnrollFace] = []
        self.faces: list[EnrollFace] = []  # the largest agreeing set found so far (at most `wanted`)
        self.seen = 0

    @property
    def complete(self) -> bool:
        return len(self.faces) >= self.wanted

    @property
    def finished(self) -> bool:
        """Enough good frames, or no more patience."""
        return self.complete or self.seen >= self.wanted * self.patience

    def offer(self, rgb: np.ndarray) -> FrameCheck:
        """Judge one frame; a good one is kept (its embedding computed here)."""
        self.seen += 1
        boxes = self.finder.detect(rgb)
        if len(boxes) > 1:
            return self._check(FrameAdvice.SEVERAL_FACES, f"{len(boxes)} faces in view", boxes)
        if not boxes:
            return self._check(FrameAdvice.NO_FACE, "no face", boxes)
        problem = quality_problem(self.finder, rgb, boxes[0])
        if problem is not None:
            small = boxes[0].width < self.finder.config.min_face_px
            return self._check(FrameAdvice.TOO_SMALL if small else FrameAdvice.TOO_BLURRY, problem, boxes)
        if not self.complete:
            self.candidates = [*self.candidates, EnrollFace(f"frame {self.seen}", self.finder.embed(rgb, boxes[0]), boxes[0])]
            self.candidates = self.candidates[-4 * self.wanted :]
            self.faces = agreeing_faces(self.candidates, self.wanted, self.bound)
        return self._check(FrameAdvice.GOOD, "good face", boxes)

    def _check(self, advice: FrameAdvice, reason: str, boxes: list[FaceBox]) -> FrameCheck:
        return FrameCheck(advice, reason, tuple(boxes), len(self.faces), self.wanted)

    def result(self) -> list[EnrollFace]:
        """The agreeing good frames; an EnrollmentError when there are too few."""
        if not self.complete:
            raise EnrollmentError(
                f"only {len(self.faces)} of {self.wanted} good frames that agree: look at the camera alone, "
                "in better light, and hold still"
            )
        return list(self.faces)


def agreeing_faces(faces: list[EnrollFace], wanted: int, bound: float = ENROLLMENT_PAIR_BOUND) -> list[EnrollFace]:
    """Up to `wanted` faces that agree pairwise within `bound`, greedily from the most central one (in frame order)."""
    if not faces:
        return []
    vectors = np.array([f.embedding for f in faces], dtype=np.float64)
    apart = np.linalg.norm(vectors[:, None, :] - vectors[None, :, :], axis=-1)
    best: list[int] = []
    for anchor in range(len(faces)):
        chosen = [anchor]
        for other in np.argsort(apart[anchor], kind="stable"):
            if len(chosen) >= wanted:
                break
            if other != anchor and all(apart[other, c] <= bound for c in chosen):
                chosen.append(int(other))
        if len(chosen) > len(best):
            best = chosen
    return [faces[i] for i in sorted(best)]


def faces_from_frames(
    finder: FaceFinder, frames: Iterable[np.ndarray], wanted: int, patience: int = 20, say: Say = _stderr
) -> list[EnrollFace]:
    """`wanted` good single-face frames (several faces: skipped, who enrolls?); says each good one, and why not."""
    collector = FrameCollector(finder, wanted, patience)
    for rgb in frames:
        check, seen = collector.offer(rgb), collector.seen
        if check.advice is FrameAdvice.SEVERAL_FACES:
            say(f"skipped frame {seen}: {check.reason}, only the person enrolling may be")
        elif check.advice is FrameAdvice.GOOD:
            say(f"frame {seen}: good face, {check.good} of {wanted}")
        elif seen % 10 == 0:
            say(f"skipped frame {seen}: {check.reason} ({check.good} of {wanted} good frames so far)")
        if collector.finished:
            break
    return collector.result()


# -- one person ----------------------------------------------------------------------------------


def disagreeing_pairs(faces: list[EnrollFace], bound: float = ENROLLMENT_PAIR_BOUND) -> list[tuple[str, str, float]]:
    """Every pair of photos further apart than `bound` (different people, or a photo too poor to trust)."""
    return [
        (a.source, b.source, float(np.linalg.norm(a.embedding - b.embedding)))
        for a, b in itertools.combinations(faces, 2)
        if not np.linalg.norm(a.embedding - b.embedding) <= bound  # NaN disagrees
    ]


def check_one_person(faces: list[EnrollFace], bound: float = ENROLLMENT_PAIR_BOUND) -> None:
    """Refuse photos that do not all agree pairwise, naming the pairs (and the odd one out if there is one)."""
    if not faces:
        raise EnrollmentError("no usable face: need a sharp, frontal face of at least the minimum size")
    pairs = disagreeing_pairs(faces, bound)
    if not pairs:
        return
    listed = ", ".join(f"{a} / {b} ({d:.2f})" for a, b, d in pairs)
    common = set.intersection(*({a, b} for a, b, _ in pairs))
    odd = f"{sorted(common)[0]} does not look like the others; " if len(common) == 1 and len(faces) > 2 else ""
    raise EnrollmentError(
        f"the photos do not look like one person: {odd}these pairs are more than {bound} apart: {listed}. "
        "Enroll each person separately, with photos of that person only"
    )


def template_from(embeddings: list[np.ndarray], bound: float = ENROLLMENT_PAIR_BOUND) -> np.ndarray:
    """The mean embedding of photos that agree pairwise within `bound`."""
    faces = [EnrollFace(f"photo {n}", np.asarray(e, dtype=np.float64)) for n, e in enumerate(embeddings, 1)]
    check_one_person(faces, bound)
    return np.mean([f.embedding for f in faces], axis=0)


def grown_template(
    existing: SealedTemplate, faces: list[EnrollFace], bound: float = ENROLLMENT_TEMPLATE_BOUND
) -> tuple[np.ndarray, int]:
    """The mean over the old template's photos and the new ones, and the new photo count.

    Each new photo must lie within `bound` of the stored template. A template sealed without a
    photo count (an older blob) counts as one photo.
    """
    far = [f.source for f in faces if not np.linalg.norm(f.embedding - existing.template) <= bound]
    if far:
        raise EnrollmentError(
            f"{', '.join(far)} do(es) not look like {existing.label!r} ({existing.subject}): "
            f"more than {bound} from the enrolled template"
        )
    old = max(existing.photos, 1)
    total = old * existing.template + np.sum([f.embedding for f in faces], axis=0)
    return total / (old + len(faces)), old + len(faces)


# -- the gallery ---------------------------------------------------------------------------------


@dataclass
class Gallery:
    """The site's subjects as this device sees them: opened sealed templates, and the rest, named."""

    size: int  # subjects the cloud lists (the templates the door compares against)
    opened: dict[str, SealedTemplate]
    unreadable: dict[str, str]  # subject -> why its sealed template did not open
    denied: list[str]  # removed at this site (deny list): not compared


def open_gallery(client: CloudClient, sealer: TemplateSealer, key_id: str, site_state: SiteState | None) -> Gallery:
    """Fetch and open every listed subject's sealed template; those that fail are kept with the reason."""
    listed = [str(item["subject"]) for item in client.subjects().get("subjects", [])]
    gallery = Gallery(len(listed), {}, {}, [])
    for subject in listed:
        if site_state is not None and site_state.is_denied(subject):
            gallery.denied.append(subject)
            continue
        try:
            gallery.opened[subject] = sealer.open(client.sealed(subject), subject, key_id)
        except (CloudError, SealError) as exc:
            gallery.unreadable[subject] = str(exc)
    return gallery


def resolve_subject(gallery: Gallery, text: str) -> SealedTemplate:
    """`--add-to`: a subject id, or a name (from the sealed templates) that exactly one subject has."""
    if text in gallery.opened:
        return gallery.opened[text]
    if text in gallery.denied:
        raise EnrollmentError(f"subject {text} was removed at this site: enroll the person anew")
    if text in gallery.unreadable:
        raise EnrollmentError(f"the sealed template of {text} does not open ({gallery.unreadable[text]}): enroll anew")
    named = [s for s in gallery.opened.values() if s.label == text]
    if len(named) > 1:
        ids = ", ".join(s.subject for s in named)
        raise EnrollmentError(f"{len(named)} subjects are named {text!r} ({ids}): give the subject id")
    if not named:
        raise EnrollmentError(f"no enrolled subject {text!r} (see `blindgate-device list`)")
    return named[0]


def duplicate_threshold(decision: DecisionConfig, gallery_size: int, calibration: Calibration | None = None) -> float:
    """The distance under which a new template counts as an enrolled person's: the door's plus the doubt margin.

    Measured with mean-of-two-photo templates (people with four or more photos, two disjoint
    templates each) at the default target, 10 enrolled (0.488): a re-enrollment is caught for
    99.2% (devtrain, 126 people) and 100% (devtest, 52); another person's template falls within
    it 0.16% (devtrain) / 0.075% (devtest) of the time, about 1.4% / 0.7% refused by mistake per
    new person against 9 others.
    """
    point = operating_point(decision, max(gallery_size, 1), "identify", calibration=calibration)
    return point.threshold + decision.doubt_margin


def matching_subjects(template: np.ndarray, gallery: Gallery, threshold: float, skip: str | None = None) -> list[SealedTemplate]:
    """Enrolled subjects (other than `skip`) whose template lies within `threshold` of `template`."""
    return [s for s in gallery.opened.values() if s.subject != skip and float(np.linalg.norm(s.template - template)) <= threshold]


def recognition_warning(decision: DecisionConfig, gallery_size: int, calibration: Calibration | None = None) -> str | None:
    """A recommendation of the claimed-identity mode when identification must recognise too few frames."""
    if decision.mode == "verify":
        return None
    point = operating_point(decision, max(gallery_size, 1), "identify", calibration=calibration)
    if point.expected_true_open >= RECOGNITION_FLOOR:
        return None
    return (
        f"warning: with {point.enrolled} people enrolled, the threshold that keeps a stranger's chance per frame at "
        f"{point.expected_false_open:.2g} ({point.threshold:.3f}) recognises an enrolled person in only about "
        f'{point.expected_true_open:.0%} of frames. Consider the claimed-identity mode: [decision] mode = "either" '
        "and a badge or PIN per person (enroll ... --badge/--pin), which compares each face with one template only."
    )


# -- enroll ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """What enrolling needs of the device's state: keys, sealer, label cipher, cloud, deny list, decision rule."""

    keys: SiteKeys
    sealer: TemplateSealer
    labels: LabelCipher
    client: CloudClient
    site_state: SiteState
    decision: DecisionConfig
    calibration: Calibration | None = None


def enroll(
    site: Site,
    name: str,
    faces: list[EnrollFace],
    add_to: str | None = None,
    carry_over: Callable[[str, str], None] | None = None,
    say: Say = _stderr,
) -> dict:
    """Check and enroll `faces` as `name` (or add them to the subject `add_to`); the answer for the CLI's JSON."""
    check_one_person(faces)
    say(f"{len(faces)} face(s) of one person; checking they are not enrolled already (sealed templates from the cloud)")
    gallery = open_gallery(site.client, site.sealer, site.keys.key_id, site.site_state)
    if gallery.unreadable:
        detail = "; ".join(f"{s}: {why}" for s, why in gallery.unreadable.items())
        raise EnrollmentError(
            f"cannot check that {name!r} is not enrolled already: {len(gallery.unreadable)} subject(s) have no sealed "
            f"template that opens ({detail}). Remove them (`blindgate-device remove ID`) or enroll them again. "
            "Nothing was enrolled"
        )
    target = resolve_subject(gallery, add_to) if add_to is not None else None
    if target is not None:
        template, photos = grown_template(target, faces)
        size = gallery.size
    else:
        template, photos = np.mean([f.embedding for f in faces], axis=0), len(faces)
        size = gallery.size + 1
    threshold = duplicate_threshold(site.decision, size, site.calibration)
    same = matching_subjects(template, gallery, threshold, skip=target.subject if target else None)
    if same:
        who = ", ".join(f"{s.label!r} ({s.subject})" for s in same)
        hint = "remove the extra ones"
        if len(same) == 1:
            hint = f"to add photos to that person: enroll NAME --add-to {same[0].subject}"
        raise EnrollmentError(f"this face is already enrolled as {who}: {hint}. Nothing was enrolled")
    warning = recognition_warning(site.decision, size, site.calibration)
    if warning:
        say(warning)

    say(f"checked against {len(gallery.opened)} enrolled; encrypting and uploading the template")
    subject = secrets.token_hex(16)  # chosen here, so the sealed template is bound to it
    sealed = site.sealer.seal(subject, site.keys.key_id, template, name, photos=photos)
    enrollment = encrypt_enrollment(site.keys, template)
    answer = site.client.enroll(enrollment, site.labels.encrypt(name), site.keys.key_id, subject=subject, sealed=sealed)
    if answer.get("subject") != subject:
        got = answer.get("subject")
        raise EnrollmentError(f"the cloud enrolled subject {got!r}, not {subject!r}: its template cannot be checked")
    result = {
        "subject": subject,
        "name": name,
        "faces": len(faces),
        "photos": photos,
        "block": answer.get("block"),
        "slot": answer.get("slot"),
        "gallery_version": answer.get("gallery_version"),
    }
    if target is not None:
        result["replaces"] = target.subject
        result["gallery_version"] = _retire(site, target.subject, subject, carry_over)
    return result


def _retire(site: Site, old: str, new: str, carry_over: Callable[[str, str], None] | None) -> object:
    """After `new` is enrolled: move per-subject data, deny `old` here, then remove it from the cloud."""
    left = f"the new template {new} is enrolled; the old one {old} is still there"
    try:
        if carry_over is not None:
            carry_over(old, new)
    except (BlindgateError, OSError) as exc:
        raise EnrollmentError(f"{left}: moving its device data failed ({exc}). Then: `blindgate-device remove {old}`") from None
    try:
        site.site_state.deny([old])  # first on the device: a failing cloud cannot keep the old template in use
    except (BlindgateError, OSError) as exc:
        raise EnrollmentError(f"{left}: denying it on this device failed ({exc}). Run `blindgate-device remove {old}`") from None
    try:
        return site.client.remove(old).get("gallery_version")
    except CloudError as exc:
        raise EnrollmentError(f"{left} in the cloud, denied on this device: {exc}. Run `blindgate-device remove {old}`") from None


__all__ = [
    "ENROLLMENT_PAIR_BOUND",
    "ENROLLMENT_TEMPLATE_BOUND",
    "RECOGNITION_FLOOR",
    "EnrollFace",
    "EnrollmentError",
    "FrameAdvice",
    "FrameCheck",
    "FrameCollector",
    "agreeing_faces",
    "Gallery",
    "Site",
    "check_one_person",
    "describe_faces",
    "duplicate_threshold",
    "enroll",
    "faces_from_frames",
    "faces_from_photos",
    "grown_template",
    "matching_subjects",
    "open_gallery",
    "parse_face_choice",
    "pick_face",
    "recognition_warning",
    "resolve_subject",
    "template_from",
]
