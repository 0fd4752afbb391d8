"""The Raspberry Pi install's smoke run, for .ci/pi-venv (not a pytest module).

Run with the python of a venv made as the README's Pi section makes it (Debian's python3,
--system-site-packages over apt's numpy 1.24, `pip install '.[device]'`): a real broker and cloud
on loopback (blindgate.shared.launch), then the installed `blindgate-device` console script does
`init`, `enroll` from the recorded clip as its camera and from a photo, and `run` on the clip, which
must recognise the person enrolled from it. Exit 0 on success, 1 with the reason otherwise; 0 with a note when the
read-only test data (../shared/faces) is absent, as the tests skip.

    VENV/bin/python tests/pi_venv_smoke.py [FACES_DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blindgate.shared.launch import CloudService, mosquitto_binary, start_broker, write_device_config

ROOT = Path(__file__).resolve().parents[1]
NAME = "Lin-Manuel Miranda"
STEP_TIMEOUT = 180


def say(message: str) -> None:
    print(f"pi-venv smoke: {message}", flush=True)


def device(config: Path, *args: str) -> str:
    """Run the installed console script; its output, or SystemExit with it on failure."""
    script = Path(sys.executable).with_name("blindgate-device")
    started = time.monotonic()
    done = subprocess.run(
        [str(script), "--config", str(config), *args], capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False
    )
    took = time.monotonic() - started
    if done.returncode != 0:
        say(f"blindgate-device {args[0]} failed (exit {done.returncode}) after {took:.1f} s:\n{done.stdout}{done.stderr}")
        raise SystemExit(1)
    say(f"blindgate-device {args[0]}: ok in {took:.1f} s")
    return done.stdout + done.stderr


def main(argv: list[str]) -> int:
    faces = Path(argv[0]) if argv else ROOT.parent / "shared" / "faces"
    clip = faces / "video" / "short_hamilton_clip.mp4"
    if not clip.is_file():
        say(f"skipped: the test clip {clip} is absent (read-only data beside the project)")
        return 0
    if mosquitto_binary() is None:
        say("mosquitto is not installed (apt-get install mosquitto)")
        return 1
    with tempfile.TemporaryDirectory(prefix="blindgate-pi-venv-") as tmp:
        work = Path(tmp)
        broker = start_broker(work / "mosquitto")
        cloud = CloudService(work / "cloud", broker, work / "cloud.log")
        try:
            say("starting the cloud")
            cloud.start()
            config = write_device_config(
                work / "door.toml",
                site="pi",
                cloud_url=cloud.url,
                broker=broker,
                state_dir=work / "door",
                camera=str(clip),
                fps=5.0,
            )
            device(config, *cloud.init_args())
            # The clip as the camera: its first good face is the enrolled person (one frame: the
            # clip's neighbouring frames are too far apart for the pairwise agreement check).
            device(config, "enroll", NAME, "--camera", "--frames", "1")
            device(config, "enroll", "Joe Biden", str(faces / "people" / "biden" / "biden.jpg"))  # a photo file
            device(config, "run")
        finally:
            cloud.stop(20)
            broker.stop()
        entries = [json.loads(line) for line in (work / "door" / "audit.jsonl").read_text().splitlines()]
    recognised = [e for e in entries if "recognized" in json.dumps(e) and NAME in json.dumps(e)]
    if not recognised:
        say(f"run never recognised {NAME}; audit log: {entries}")
        return 1
    say(f"run recognised {NAME} on the clip ({len(recognised)} audit entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
