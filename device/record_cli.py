"""`blindgate-device record`: labelled sessions at the door's own camera, to measure the liveness check there.

    blindgate-device record FOLDER --kind genuine [--sessions 10] [--seconds 4] [--countdown 3]
    blindgate-device record FOLDER --kind print|bent_print|screen_still|phone_video ...

Each session is `--seconds` of frames from the configured camera, written with their capture
times under `FOLDER/<kind>/<session>/` (device/liveness_sessions.py). Genuine: a person walks up
and turns their head slightly when told (as the door's prompt asks). Attacks: a printed photo of an
enrolled person (flat, then bent), a phone showing a photo, a phone playing a video of them, each
held in front of the camera and moved the way someone trying to get in would. Then:

    blindgate-device evaluate --liveness FOLDER --out report.json

The camera is the agent's: stop the door service while recording. Everything stays in FOLDER on
this machine; the frames are pictures of people: delete them when the measurement is done.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError

from .liveness_attacks import AttackKind
from .liveness_sessions import frame_rate, write_session

KIND_HINTS = {
    AttackKind.GENUINE: "walk up, look at the camera, turn your head slightly when told",
    AttackKind.PRINT: "hold a printed photo of an enrolled person in front of the camera and move it",
    AttackKind.BENT_PRINT: "bend the printed photo around your hand and move it",
    AttackKind.SCREEN_STILL: "hold a phone showing a photo of an enrolled person and move it",
    AttackKind.PHONE_VIDEO: "hold a phone playing a video of an enrolled person",
}


class RecordError(BlindgateError, ValueError):
    """The recording could not start or was cut short."""


def add_record_command(sub, common: argparse.ArgumentParser) -> dict[str, Callable[[DeviceConfig, argparse.Namespace], int]]:
    p = sub.add_parser("record", parents=[common], help="record labelled sessions at the camera, for `evaluate --liveness`")
    p.add_argument("folder", type=Path)
    p.add_argument("--kind", required=True, choices=[k.value for k in AttackKind], help="what is in front of the camera")
    p.add_argument("--sessions", type=int, default=1, help="sessions to record one after another (default 1)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each session (default 4)")
    p.add_argument("--countdown", type=float, default=3.0, help="seconds to get ready before each session (default 3)")
    return {"record": cmd_record}


def cmd_record(config: DeviceConfig, args: argparse.Namespace, camera=None, say=None) -> int:
    from .build import open_configured_camera

    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if args.sessions < 1 or not 0.5 <= args.seconds <= 60 or args.countdown < 0:
        raise RecordError("--sessions must be at least 1, --seconds 0.5..60, --countdown 0 or more")
    kind = AttackKind(args.kind)
    with camera if camera is not None else open_configured_camera(config) as source:
        for n in range(1, args.sessions + 1):
            say(f"session {n}/{args.sessions} ({kind.value}): {KIND_HINTS[kind]}")
            _count_down(args.countdown, say)
            say("recording: turn your head slightly" if kind is AttackKind.GENUINE else "recording")
            frames: list[np.ndarray] = []
            stamps: list[float] = []
            start = None
            while True:
                frame = source.read()
                if frame is None:
                    raise RecordError(f"the camera stopped after {len(frames)} frames: nothing of session {n} was kept")
                start = frame.timestamp if start is None else start
                if frame.timestamp - start > args.seconds:
                    break
                frames.append(frame.rgb)
                stamps.append(frame.timestamp - start)
            fps = frame_rate(stamps, float(config.camera.fps or 10))
            source_text = f"record {config.device_id} {config.camera.source}"
            path = write_session(args.folder, kind, frames, fps, stamps, source=source_text)
            say(f"session {n}: {len(frames)} frames ({fps:.1f} per second) -> {path}")
            if fps < 15:
                say("note: fewer than 15 frames per second; the liveness check was measured at 15-30 ([camera] fps)")
    return 0


def _count_down(seconds: float, say: Callable[[str], None]) -> None:
    remaining = seconds
    while remaining > 0:
        say(f"  {remaining:.0f} ...")
        step = min(1.0, remaining)
        time.sleep(step)
        remaining -= step


__all__ = ["KIND_HINTS", "RecordError", "add_record_command", "cmd_record"]
