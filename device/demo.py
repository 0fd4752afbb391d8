"""The whole system in one command: broker, cloud, a provisioned door, enrollment, a camera stream.

    python -m blindgate.device.demo [--faces DIR | --sample] [--camera SPEC --enroll NAME=IMAGE ...] [--keep]

It starts Mosquitto on a free loopback port (temporary config), the cloud service
(`python -m blindgate.cloud.cli serve`) on a fresh temporary state directory, provisions a site exactly as
`blindgate-device init` does, enrolls people with `blindgate-device enroll`, then runs the door
agent over a recorded camera stream with gpiozero's mock pin as the lock. Every decision and
every lock change is printed as it happens, with the time of each step (detect, embed, encrypt,
round trip, decrypt); distances and scores are never printed, exactly as the agent's events
carry none. The printing is attached to the real agent through its `when_decided` and
`when_lock_changed` callbacks. Ctrl-C (or SIGTERM) stops everything and removes the temporary files (unless --keep).

People and camera:
- with ../shared/faces beside the repository (or --faces DIR): the people of DIR/people are
  enrolled and video/short_hamilton_clip.mp4 is the camera; the door must open for
  lin_manuel_miranda (the one person in the clip) and for nobody else;
- otherwise (or with --sample): scikit-image's sample astronaut photograph (shipped inside the
  package, nothing is downloaded) is enrolled, and altered copies of it (brightness, noise, a
  small shift) plus pictures without a face, written to a temporary folder, are the camera;
- or your own: --camera SPEC (video file, image folder, device number, URL, picamera2) with
  one or more --enroll NAME=IMAGE (and --expect NAME: who must get in).

Exit status: 0 when the door opened for the expected person and never for anyone else,
1 otherwise, 3 when Mosquitto is missing and cannot be installed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blindgate.device.agent import Agent, Verdict
from blindgate.device.build import build_agent, open_configured_camera
from blindgate.device.camera import CameraSource, Frame
from blindgate.device.cli import main as device_main
from blindgate.device.decision import Decision, DoorEvent, VerdictKind
from blindgate.shared.config import DeviceConfig, load_config
from blindgate.shared.errors import BlindgateError
from blindgate.shared.launch import CloudService, mosquitto_binary, start_broker, write_device_config

DEFAULT_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
VIDEO = Path("video") / "short_hamilton_clip.mp4"
VIDEO_PERSON = "lin_manuel_miranda"  # the one person in the clip (faces/README.md)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
STAGES = (
    ("detect", "detect_ms"),
    ("embed", "embed_ms"),
    ("encrypt", "encrypt_ms"),
    ("round trip", "round_trip_ms"),
    ("decrypt", "decrypt_ms"),
)


class DemoError(BlindgateError, RuntimeError):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def phase(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def say(text: str) -> None:
    print(f"  {text}", flush=True)


# -- mosquitto -----------------------------------------------------------------------------------


def ensure_mosquitto() -> str:
    """The mosquitto binary; installed with apt-get when missing and we may (root or sudo -n)."""
    found = mosquitto_binary()
    if found:
        return found
    prefix: list[str] | None = None
    if shutil.which("apt-get"):
        if os.geteuid() == 0:
            prefix = []
        elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
            prefix = ["sudo", "-n"]
    if prefix is None:
        raise DemoError(
            "the mosquitto MQTT broker is not installed and I cannot install it (not root, no passwordless sudo).\n"
            "  Install it, then run `make demo` again:\n"
            "      sudo apt-get install mosquitto\n"
            "  (the demo starts its own broker on a free loopback port; the system service is not used)",
            code=3,
        )
    say(f"mosquitto not found: installing it with {'sudo ' if prefix else ''}apt-get install mosquitto")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "mosquitto"]):
        if subprocess.run(prefix + cmd, env=env).returncode != 0:
            raise DemoError(f"`{' '.join(prefix + cmd)}` failed; install mosquitto yourself and retry", code=3)
    found = mosquitto_binary()
    if not found:
        raise DemoError("mosquitto still not found after apt-get install", code=3)
    return found


# -- what to enroll, what the camera shows -------------------------------------------------------


def plan_real(faces: Path) -> tuple[dict[str, list[Path]], str, str, None]:
    people = {}
    for person in sorted(p for p in (faces / "people").iterdir() if p.is_dir()):
        images = sorted(f for f in person.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and "partial" not in f.name)
        if images:
            people[person.name] = images[:3]  # up to three photos, averaged into one template
    return people, str(faces / VIDEO), VIDEO_PERSON, None


def plan_sample(workdir: Path) -> tuple[dict[str, list[Path]], str, str, dict[int, str | None]]:
    """The astronaut enrolled from the original; the camera folder holds altered copies of it,
    pictures without a face and a stranger (the sample cameraman). Also returns who each frame
    shows, so an opening on the wrong frame is caught."""
    import cv2
    import numpy as np
    from skimage import data  # sample images ship inside the package: no download

    def save(path: Path, rgb) -> Path:
        cv2.imwrite(str(path), cv2.cvtColor(np.asarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR))
        return path

    face = data.astronaut()
    enroll_dir, camera_dir = workdir / "enroll", workdir / "camera"
    enroll_dir.mkdir()
    camera_dir.mkdir()
    # The detector also finds a "face" on the mission patch (y 335-425); enrollment refuses a photo
    # with two faces, so the enrollment photo is cropped to the astronaut (the embedding is unchanged).
    enrolled = save(enroll_dir / "astronaut.png", face[:300])
    rng = np.random.default_rng(7)
    f = face.astype(np.float64)
    shifted = np.roll(face, (0, 8), axis=(0, 1))
    stranger = np.kron(data.camera(), np.ones((2, 2), dtype=np.uint8))[..., None].repeat(3, axis=2)  # the cameraman
    frames = [
        ("coffee", None, data.coffee()),  # no face: skipped, not a verdict
        ("cameraman", "cameraman", stranger),
        ("cameraman-darker", "cameraman", stranger * 0.8),
        ("astronaut-darker", "astronaut", f * 0.7),
        ("astronaut-noisy", "astronaut", f + rng.normal(0, 8, f.shape)),
        ("chelsea-the-cat", None, data.chelsea()),
        ("astronaut-shifted", "astronaut", shifted),
        ("astronaut-brighter", "astronaut", f * 1.2 + 10),
        ("astronaut-shifted-noisy", "astronaut", shifted + rng.normal(0, 6, f.shape)),
        ("astronaut-dim-noisy", "astronaut", f * 0.8 + rng.normal(0, 5, f.shape)),
    ]
    truth = {}
    for i, (name, who, rgb) in enumerate(frames):
        save(camera_dir / f"{i:02d}-{name}.png", np.clip(rgb, 0, 255))
        truth[i] = who
    return {"astronaut": [enrolled]}, str(camera_dir), "astronaut", truth


def plan_custom(enroll: list[str]) -> dict[str, list[Path]]:
    people: dict[str, list[Path]] = {}
    for item in enroll:
        name, sep, image = item.partition("=")
        if not sep or not name or not image:
            raise DemoError(f"--enroll {item!r}: expected NAME=IMAGE", code=2)
        if not Path(image).is_file():
            raise DemoError(f"--enroll {item!r}: no such image file", code=2)
        people.setdefault(name, []).append(Path(image))
    return people


# -- device side -------------------------------------------------------------------------------


def device_cli(config: Path, *args: str) -> tuple[int, str, str]:
    """`blindgate-device --config CONFIG ARGS` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = device_main(["--config", str(config), *args])
    return code, out.getvalue(), err.getvalue()


def enroll_people(config: Path, people: dict[str, list[Path]]) -> list[str]:
    enrolled = []
    for name, images in people.items():
        t0 = time.monotonic()
        code, out, err = device_cli(config, "enroll", name, *map(str, images))
        used = len(images)
        if code != 0 and len(images) > 1:  # photos that do not agree: the first one alone
            code, out, err = device_cli(config, "enroll", name, str(images[0]))
            used = 1
        if code != 0:
            say(f"{name}: not enrolled ({(err.strip().splitlines() or ['failed'])[-1]})")
            continue
        answer = json.loads(out.strip().splitlines()[-1])
        say(
            f"{name}: enrolled from {answer['faces']} of {used} photo(s) as subject {answer['subject']} "
            f"(encrypted template -> cloud, {time.monotonic() - t0:.1f} s)"
        )
        enrolled.append(name)
    return enrolled


class DoorPrinter:
    """Prints each judged frame and each lock change as they happen (attached as agent callbacks)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.frame_index = 0
        self.openings: list[tuple[str | None, int]] = []
        self.shown_lock: str | None = None
        self.judged = 0

    def attach(self, agent: Agent) -> None:
        self.lock = agent.lock
        agent.when_decided = self.decided
        agent.when_lock_changed = self.lock_changed

    def stamp(self) -> str:
        return f"{time.monotonic() - self.t0:6.1f}s"

    def lock_changed(self, state: str) -> None:
        self.shown_lock = state
        print(f"{self.stamp()}  lock -> {state}", flush=True)

    def decided(self, verdict: Verdict, decision: Decision) -> None:
        if not verdict.timings:
            return  # not a judged frame (an internal error): the agent logs it
        self.judged += 1
        if decision.event:
            who = verdict.label if decision.event != DoorEvent.UNKNOWN else "face"
            what = f"{decision.event.upper()} {who or ''}".strip()
        elif verdict.kind is VerdictKind.MATCH:
            what = f"match {verdict.label} ({decision.reason})"
        else:
            what = decision.reason
        if decision.unlock:
            self.openings.append((verdict.label, self.frame_index))
        door = "LOCKED" if self.lock.is_locked else "UNLOCKED"
        steps = ", ".join(f"{name} {verdict.timings.get(key, 0.0):.0f} ms" for name, key in STAGES)
        print(f"{self.stamp()}  frame {self.frame_index:4d}  {what:56s} door {door:8s} ({steps})", flush=True)


class NumberedCamera:
    """Passes frames through, telling the printer which frame the agent is judging."""

    def __init__(self, camera: CameraSource, printer: DoorPrinter) -> None:
        self.camera, self.printer, self.frames = camera, printer, 0

    def read(self) -> Frame | None:
        frame = self.camera.read()
        if frame is not None:
            self.frames += 1
            self.printer.frame_index = frame.index
        return frame

    def close(self) -> None:
        self.camera.close()


def run_door(config_path: Path, expected: str | None, enrolled: list[str], truth: dict[int, str | None] | None = None) -> int:
    config = load_config(DeviceConfig, config_path)
    agent = build_agent(config)
    printer = DoorPrinter()
    printer.attach(agent)
    try:
        agent.connect(wait=10)
        with open_configured_camera(config) as camera:
            numbered = NumberedCamera(camera, printer)
            agent.run(numbered)  # returns once the door has locked again
    finally:
        agent.close()
    if printer.shown_lock != "LOCKED":
        print(f"{printer.stamp()}  lock -> LOCKED (agent stopped)")

    phase("summary")
    opened = [label for label, _ in printer.openings]
    say(
        f"frames read {numbered.frames}, faces judged {printer.judged}, door opened {len(opened)} time(s)"
        + (f" for {', '.join(sorted(set(map(str, opened))))}" if opened else "")
    )
    counters = {k: v for k, v in sorted(agent.counters.items())}
    say("counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    timings = list(agent.timings)
    if timings:
        say(
            "median per judged frame: "
            + ", ".join(f"{name} {statistics.median(t.get(key, 0.0) for t in timings):.0f} ms" for name, key in STAGES)
        )
    if expected is not None:
        ok = expected in opened and all(label == expected for label in opened)
        if truth is not None:  # and on frames that show that person
            ok = ok and all(truth.get(index) == expected for _, index in printer.openings)
        wanted = f"the door opened for {expected} and for nobody else"
    else:
        ok = bool(opened) and all(label in enrolled for label in opened)
        wanted = "the door opened for an enrolled person"
    say(("PASS: " if ok else "FAIL: expected ") + wanted)
    return 0 if ok else 1


# -- the whole system -------------------------------------------------------------------------------


def _interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: unwind, stop children, clean up
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blindgate.device.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--faces", type=Path, default=DEFAULT_FACES, help="face data folder with people/ and video/ (default ../shared/faces)"
    )
    parser.add_argument(
        "--sample", action="store_true", help="use scikit-image's sample photograph even if the face data is there"
    )
    parser.add_argument("--camera", help="camera source: video file, image folder, device number, URL or picamera2")
    parser.add_argument("--enroll", action="append", default=[], metavar="NAME=IMAGE", help="enroll NAME from IMAGE (repeatable)")
    parser.add_argument("--expect", metavar="NAME", help="who must get in (with --camera/--enroll)")
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second taken from a video (default 5)")
    parser.add_argument("--realtime", action="store_true", help="pace recorded video like a live camera")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state) at the end")
    args = parser.parse_args(argv)
    if bool(args.camera) != bool(args.enroll):
        parser.error("--camera and --enroll go together")

    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="blindgate-demo-"))
    broker = cloud = None
    code = 1
    try:
        phase("1/5 broker")
        binary = ensure_mosquitto()
        broker = start_broker(workdir / "mosquitto")
        say(f"mosquitto ({binary}) listening on {broker.host}:{broker.port}, config {broker.workdir / 'mosquitto.conf'}")

        phase("2/5 cloud service")
        t0 = time.monotonic()
        cloud = CloudService(workdir / "cloud", broker, workdir / "cloud.log").start()
        pid = cloud.process.pid if cloud.process is not None else "?"
        say(
            f"python -m blindgate.cloud.cli serve: pid {pid}, {cloud.url}, fresh state {cloud.state_dir} "
            f"(ready in {time.monotonic() - t0:.1f} s, log {cloud.log_path})"
        )

        if args.camera:
            people, camera, expected, truth = plan_custom(args.enroll), args.camera, args.expect, None
            say(f"camera {camera}, people from --enroll")
        elif not args.sample and (args.faces / "people").is_dir() and (args.faces / VIDEO).is_file():
            people, camera, expected, truth = plan_real(args.faces)
            say(f"faces: {args.faces}; camera: {camera}")
        else:
            why = "--sample" if args.sample else f"{args.faces} not found"
            people, camera, expected, truth = plan_sample(workdir)
            say(f"faces: {why}; using scikit-image's sample astronaut photograph; camera: altered copies in {camera}")

        phase("3/5 provision the door (blindgate-device init)")
        config = write_device_config(
            workdir / "device.toml",
            site="demo",
            cloud_url=cloud.url,
            broker=broker,
            state_dir=workdir / "device",
            camera=camera,
            fps=args.fps,
            realtime=args.realtime,
            log_level="WARNING",  # decisions are printed instead
        )
        t0 = time.monotonic()
        rc, out, err = device_cli(config, *cloud.init_args())  # the token the cloud created at first start
        if rc != 0:
            raise DemoError(f"init failed: {err.strip()}")
        for line in out.strip().splitlines():
            say(line)
        say(f"(site keys generated and evaluation keys registered in {time.monotonic() - t0:.1f} s)")

        phase("4/5 enroll")
        enrolled = enroll_people(config, people)
        if expected is not None and expected not in enrolled:
            raise DemoError(f"{expected} could not be enrolled")

        phase(f"5/5 door agent on {camera}" + (f" (must open for {expected} only)" if expected else ""))
        code = run_door(config, expected, enrolled, truth)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping", flush=True)
        code = 130
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        code = exc.code
    except Exception as exc:  # a launch failure: say what and where the logs are
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
        args.keep = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        if cloud is not None:
            cloud.stop(20)
        if broker is not None:
            broker.stop()
        if args.keep:
            print(f"kept {workdir} (state, config, logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
