"""Benchmark: what the liveness check costs the door (`[liveness] mode = "motion"`).

    python bench/liveness.py [--frames 270]

On the recorded Hamilton clip at the door's 640x480 (padded), the way the door runs the check
after a match: the face followed between full detections (a region scan, the whole frame every
10 frames: device/landmarks.py `FaceFollower`) and dlib's 68 landmarks per frame, then
`judge_window` over each 2 s of them (device/liveness.py). Reports:
- CPU per frame (following + landmarks), median and p95, and the landmark frames per second one
  core sustains (the check wants 15 or more);
- the judge per 2 s window (median, p95);
- the delay the check adds to an opening: the window (2 s) plus the judge and one frame;
- resident memory before and after loading the 68-point model.
The door's frame-to-decision time without liveness is `bench/device_latency.py` (unchanged: the
model is not even loaded when liveness is off). One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
WINDOW_S = 2.0


def log(msg: str) -> None:
    print(f"[liveness] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=270, help="clip frames to follow (default: the whole clip)")
    args = parser.parse_args()
    if not FACES.is_dir():
        print(json.dumps({"error": f"face data not found at {FACES}"}))
        return 2
    import numpy as np

    from blindgate.device.build import face_config
    from blindgate.device.camera import open_camera
    from blindgate.device.evaluation.liveness_run import rss_mb, spread
    from blindgate.device.faces import FaceAnalyzer
    from blindgate.device.liveness import DEFAULT_SETTINGS, judge_window
    from blindgate.shared.config import DeviceConfig

    analyzer = FaceAnalyzer(face_config(DeviceConfig()))
    with open_camera(FACES / "video" / "short_hamilton_clip.mp4") as camera:
        clip = list(iter(camera.read, None))[: args.frames]
    frames = []
    for frame in clip:  # padded to the door's 640x480
        rgb = frame.rgb
        pad = max(0, (480 - rgb.shape[0]) // 2)
        frames.append(np.pad(rgb, ((pad, 480 - rgb.shape[0] - pad), (0, 0), (0, 0))))
    stamps = [f.timestamp - clip[0].timestamp for f in clip]

    before = rss_mb()
    t0 = time.perf_counter()
    from blindgate.device.landmarks import FaceFollower, LandmarkFinder

    finder = LandmarkFinder()
    load_s = time.perf_counter() - t0
    after = rss_mb()
    log(f"68-point model loaded in {load_s:.2f} s, +{after - before:.0f} MB")
    follower = FaceFollower(analyzer, finder)
    cpu, points = [], []
    for rgb in frames:
        c0 = time.process_time()
        points.append(follower.offer(rgb))
        cpu.append((time.process_time() - c0) * 1000)
    found = sum(p is not None for p in points)
    log(f"{len(frames)} frames followed, landmarks in {found}")

    judge, starts = [], [stamps[0] + k * 0.5 for k in range(100)]
    for start in starts:
        if start + WINDOW_S > stamps[-1]:
            break
        window = [p for p, t in zip(points, stamps) if start <= t < start + WINDOW_S]
        c0 = time.perf_counter()
        judge_window(window, DEFAULT_SETTINGS)
        judge.append((time.perf_counter() - c0) * 1000)
    per_frame = spread(cpu)
    print(
        json.dumps(
            {
                "benchmark": "liveness",
                "frame": "640x480 (the clip padded)",
                "frames": len(frames),
                "frames_with_landmarks": found,
                "cpu_per_frame_ms": per_frame,
                "landmark_fps_one_core": round(1000 / per_frame["median"], 1),
                "judge_per_window_ms": spread(judge),
                "added_delay_ms": round(WINDOW_S * 1000 + statistics.median(judge) + per_frame["median"], 1),
                "model_load_s": round(load_s, 2),
                "memory_mb": {
                    "before_model": round(before, 1),
                    "after_model": round(after, 1),
                    "added": round(after - before, 1),
                },
                "cpu_count": os.cpu_count(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
