"""`blindgate-device evaluate --liveness FOLDER`: how well the liveness check tells heads from pictures.

    blindgate-device evaluate --liveness FOLDER [--stride S] [--window-s 2] [--out REPORT.json]
    blindgate-device evaluate --liveness-synthetic FACES_DIR --out FOLDER [--seeds N] [--people a,b]

FOLDER holds sessions as `blindgate-device record` writes them (device/liveness_sessions.py):
`FOLDER/<kind>/<session>/frame-NNNNN.jpg` and `session.json`; `genuine` sessions are live people,
every other kind an attack (print, bent_print, screen_still, phone_video). Each session is played
through the door's own parts: the face followed between full detections with the door's face
settings (device/landmarks.py), the 68 landmarks of each frame, and `judge_window`
(device/liveness.py) over the window that starts at the first frame with a face — what the door
does after a match. With `--stride S`, further windows start every S seconds of the session
(long genuine recordings give several presentations).

Reported per ISO/IEC 30107-3, with counts and one-sided 95% upper bounds (Clopper-Pearson):
- APCER per attack type: attack presentations the check accepted as live;
- BPCER: genuine presentations it did not accept (flat, too little movement, too few frames);
- the added delay at the door: the window plus the judging time (median, p95);
- the CPU per frame (following + landmarks; median, p95) and per window (judging), and the
  memory the 68-point model adds.
The residuals stay in this offline report's JSON (public or your own test recordings, never a
door's live traffic).

`--liveness-synthetic` writes a test set made here: every photo of FACES_DIR/people/<name>/ as
a print, a bent print and a screen still (device/liveness_attacks.py), `--seeds` motions each
(odd seeds tilted hard: swing 1.8),
and FACES_DIR/video/short_hamilton_clip.mp4 as one genuine session.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from blindgate.device.liveness import DEFAULT_SETTINGS, LivenessKind, LivenessResult, LivenessSettings, judge_window
from blindgate.device.liveness_attacks import GENERATED_KINDS, AttackKind
from blindgate.device.liveness_sessions import Session, SessionError, frame_rate, read_sessions, write_session
from blindgate.shared.errors import BlindgateError

WINDOW_S = 2.0
CONFIDENCE = 0.95
# The threshold sits this far above the largest residual an attack window reached when it was fitted:
# fitted on 3 of the 6 synthetic people, 1.4 was the least that stopped the other 3 people's attacks.
FIT_MARGIN = 1.4


@dataclass
class Presentation:
    """One judged window of one session."""

    kind: str  # the session's kind (genuine or an attack type)
    session: str
    start_s: float
    outcome: str  # a LivenessKind value
    residual: float | None
    motion: float | None
    frames: int
    judge_ms: float


def upper_bound(errors: int, trials: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of an error rate seen as `errors` in `trials` (1.0 without trials)."""
    if trials <= 0 or errors >= trials:
        return 1.0
    alpha = 1 - confidence

    def cdf(p: float) -> float:  # P(X <= errors) for Binomial(trials, p), summed in log space
        total = 0.0
        for k in range(errors + 1):
            log_term = math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
            log_term += k * math.log(p) + (trials - k) * math.log1p(-p)
            total += math.exp(log_term)
        return total

    low, high = errors / trials, 1.0
    for _ in range(100):  # cdf falls as p grows: the p where it equals alpha
        mid = (low + high) / 2
        if mid <= 0 or cdf(mid) > alpha:
            low = mid
        else:
            high = mid
    return high


def fit_max_flat_residual(results: Iterable[LivenessResult], margin: float = FIT_MARGIN) -> float:
    """A `max_flat_residual` from attack windows judged with threshold 0: their largest residual, times `margin`.

    Windows that could not be judged (too still, too few frames) carry no residual and are left
    out: the door never opens on them anyway.
    """
    residuals = [r.residual for r in results if r.residual is not None and r.kind not in _UNJUDGED]
    if not residuals:
        raise ValueError("no attack window moved enough to fit a threshold: record attacks that move")
    return max(residuals) * margin


_UNJUDGED = (LivenessKind.STILL, LivenessKind.FEW_FRAMES)


def landmark_track(session: Session, follower, clock=time.process_time) -> tuple[list[np.ndarray | None], list[float]]:
    """The followed face's landmarks in every frame of the session, and the CPU ms each frame cost."""
    follower.reset()
    points, costs = [], []
    for rgb in session.frames():
        t0 = clock()
        points.append(follower.offer(rgb))
        costs.append((clock() - t0) * 1000)
    return points, costs


def windows(
    session: Session,
    points: Sequence[np.ndarray | None],
    window_s: float,
    stride_s: float | None,
    settings: LivenessSettings,
) -> list[Presentation]:
    """The judged windows: from the first face, then every `stride_s` (None: the first only)."""
    stamps = np.asarray(session.timestamps, dtype=np.float64)
    faces = [i for i, p in enumerate(points) if p is not None]
    if not faces:
        return [Presentation(str(session.kind), session.path.name, 0.0, str(LivenessKind.FEW_FRAMES), None, None, 0, 0.0)]
    starts = [float(stamps[faces[0]])]
    if stride_s:
        while starts[-1] + stride_s + window_s <= stamps[-1] + 1e-9:
            starts.append(starts[-1] + stride_s)
    judged = []
    for start in starts:
        inside = [points[i] for i in range(len(points)) if start <= stamps[i] < start + window_s]
        t0 = time.perf_counter()
        try:
            result = judge_window(inside, settings)
            outcome, residual, motion, frames = str(result.kind), result.residual, result.motion, result.frames
        except BlindgateError:  # degenerate landmarks: the door treats it as not live
            outcome, residual, motion, frames = "error", None, None, sum(p is not None for p in inside)
        judge_ms = (time.perf_counter() - t0) * 1000
        judged.append(
            Presentation(str(session.kind), session.path.name, start - starts[0], outcome, residual, motion, frames, judge_ms)
        )
    return judged


def report(presentations: list[Presentation], frame_ms: list[float], window_s: float, memory_mb: float | None) -> dict:
    """APCER per attack type, BPCER, delay and cost, as a JSON-ready dict."""
    by_kind: dict[str, list[Presentation]] = {}
    for p in presentations:
        by_kind.setdefault(p.kind, []).append(p)
    rates: dict[str, dict] = {}
    for kind, items in sorted(by_kind.items()):
        accepted = sum(p.outcome == LivenessKind.LIVE for p in items)
        errors = len(items) - accepted if kind == AttackKind.GENUINE else accepted
        rates[kind] = {
            "metric": "BPCER" if kind == AttackKind.GENUINE else "APCER",
            "presentations": len(items),
            "errors": errors,
            "rate": round(errors / len(items), 4),
            "upper_95": round(upper_bound(errors, len(items)), 4),
            "outcomes": dict(Counter(p.outcome for p in items)),
        }
    judge = [p.judge_ms for p in presentations]
    delays = [window_s * 1000 + p.judge_ms + (statistics.median(frame_ms) if frame_ms else 0.0) for p in presentations]
    return {
        "rates": rates,
        "worst_apcer": max((float(r["rate"]) for k, r in rates.items() if k != AttackKind.GENUINE), default=None),
        "added_delay_ms": spread(delays),
        "cpu_per_frame_ms": spread(frame_ms),
        "judge_per_window_ms": spread(judge),
        "landmark_model_memory_mb": memory_mb,
        "window_s": window_s,
    }


def spread(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
    }


def rss_mb() -> float:
    """This process's resident memory now (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_folder(folder: Path, window_s: float, stride_s: float | None, settings: LivenessSettings, say=print) -> dict:
    """Play every session of `folder` through the door's liveness parts; the report."""
    from blindgate.device.faces import FaceAnalyzer, FaceConfig
    from blindgate.device.landmarks import FaceFollower, LandmarkFinder

    sessions = list(read_sessions(folder))
    if not sessions:
        raise SessionError(f"no sessions in {folder} (record some with `blindgate-device record`)")
    before = rss_mb()
    landmarks = LandmarkFinder()
    memory = round(rss_mb() - before, 1)
    follower = FaceFollower(FaceAnalyzer(FaceConfig()), landmarks)
    presentations: list[Presentation] = []
    frame_ms: list[float] = []
    for n, session in enumerate(sessions, 1):
        points, costs = landmark_track(session, follower)
        frame_ms += costs
        judged = windows(session, points, window_s, stride_s, settings)
        presentations += judged
        say(f"[{n}/{len(sessions)}] {session.kind}/{session.path.name}: {', '.join(p.outcome for p in judged)}")
    out = report(presentations, frame_ms, window_s, memory)
    out["presentations"] = [p.__dict__ for p in presentations]
    return out


def make_synthetic(faces: Path, out: Path, seeds: int, people: list[str] | None, say=print) -> int:
    """Write the synthetic test set: prints, bent prints and screen stills of each photo, the clip as genuine."""
    from blindgate.device.camera import open_camera
    from blindgate.device.imaging import load_image
    from blindgate.device.liveness_attacks import attack_frames

    written = 0
    for person in sorted(p for p in (faces / "people").iterdir() if p.is_dir()):
        if people and person.name not in people:
            continue
        for photo in sorted(person.glob("*")):
            if photo.suffix.lower() not in (".jpg", ".jpeg", ".png") or "partial" in photo.name:
                continue
            rgb = load_image(photo)
            for kind in GENERATED_KINDS:
                for seed in range(seeds):
                    swing = 1.0 if seed % 2 == 0 else 1.8  # odd seeds: tilted hard, as someone faking depth would
                    frames = attack_frames(rgb, kind, seed=seed, swing=swing)
                    write_session(
                        out, kind, frames, 30.0, source=f"synthetic {person.name}/{photo.name} seed {seed} swing {swing}"
                    )
                    written += 1
            say(f"{person.name}/{photo.name}: {len(GENERATED_KINDS) * seeds} attack sessions")
    clip = faces / "video" / "short_hamilton_clip.mp4"
    if clip.is_file():
        with open_camera(clip) as camera:
            played = list(iter(camera.read, None))
        stamps = [f.timestamp - played[0].timestamp for f in played]
        fps = frame_rate(stamps, 30.0)
        write_session(out, AttackKind.GENUINE, [f.rgb for f in played], fps, stamps, source=f"clip {clip.name}")
        written += 1
        say(f"{clip.name}: 1 genuine session of {len(played)} frames")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blindgate-device evaluate --liveness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--liveness", type=Path, metavar="FOLDER", help="recorded (or synthetic) sessions to evaluate")
    parser.add_argument(
        "--liveness-synthetic", type=Path, metavar="FACES_DIR", help="write the synthetic set from FACES_DIR to --out"
    )
    parser.add_argument("--out", type=Path, help="the report (JSON) or, with --liveness-synthetic, the folder to write")
    parser.add_argument("--window-s", type=float, default=WINDOW_S, help="window length (default 2, as [liveness] window_s)")
    parser.add_argument("--stride", type=float, default=None, help="further windows every S seconds of each session")
    parser.add_argument(
        "--max-flat-residual", type=float, default=None, help="the threshold to evaluate (default: the shipped one)"
    )
    parser.add_argument("--blink", action="store_true", help="also require a blink (mode motion+blink)")
    parser.add_argument("--seeds", type=int, default=3, help="synthetic: motions per photo and attack type (default 3)")
    parser.add_argument("--people", help="synthetic: only these people (comma separated)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.liveness_synthetic is not None:
            if args.out is None:
                parser.error("--liveness-synthetic needs --out FOLDER")
            people = args.people.split(",") if args.people else None
            count = make_synthetic(args.liveness_synthetic, args.out, args.seeds, people, say)
            print(json.dumps({"sessions_written": count, "folder": str(args.out)}))
            return 0
        if args.liveness is None:
            parser.error("give --liveness FOLDER (or --liveness-synthetic FACES_DIR --out FOLDER)")
        settings = (
            DEFAULT_SETTINGS
            if args.max_flat_residual is None
            else replace(DEFAULT_SETTINGS, max_flat_residual=args.max_flat_residual)
        )
        settings = replace(settings, blink=args.blink)
        result = evaluate_folder(args.liveness, args.window_s, args.stride, settings, say)
    except (BlindgateError, OSError) as exc:
        print(f"blindgate-device evaluate: {exc}", file=sys.stderr)
        return 2
    result["settings"] = settings.__dict__ | {"cpu_count": os.cpu_count()}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    summary = {k: v for k, v in result.items() if k != "presentations"}
    print(json.dumps(summary, indent=2, default=str))
    return 0


__all__ = [
    "FIT_MARGIN",
    "Presentation",
    "evaluate_folder",
    "fit_max_flat_residual",
    "landmark_track",
    "main",
    "make_synthetic",
    "report",
    "rss_mb",
    "spread",
    "upper_bound",
    "windows",
]
