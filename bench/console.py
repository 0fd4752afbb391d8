"""Benchmark: the door console's page weight and what an open live view costs the door.

    python bench/console.py [--seconds 30] [--fps 4]

Starts Mosquitto, the cloud service and `blindgate-device console` (a subprocess) on the
Hamilton clip (looped, 10 frames/s at its own pace, the door's 640x480), with Lin-Manuel
Miranda enrolled from one photo, logs in over HTTP and measures:
- page weight: the bytes of each page (HTML, the one stylesheet, the one script) and of one
  live picture, as a browser would load them (uncompressed: the endpoint does not gzip);
- the door process's CPU (utime + stime from /proc) over `--seconds` with nobody watching, then
  with a live view open: a client doing what console.js does (a picture `--fps` times a second,
  the state twice a second), counting the pictures it got and how many were new frames;
- the door's frames judged per second in both phases (its `frames_judged`-style counters are not
  exposed, so this counts audit lines and log lines of judged frames).
One JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
PASSWORD = "bench console password"


def log(msg: str) -> None:
    print(f"[console] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Browser:
    """An HTTP client with a cookie jar: what a browser tab does to the console, minus the rendering."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> tuple[int, dict, bytes]:
        try:
            with self.opener.open(self.base + path, timeout=10) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def log_in(self) -> None:
        _, _, page = self.get("/login")
        token = re.search(rb'name="login_token" value="([^"]+)"', page).group(1).decode()
        body = urllib.parse.urlencode({"login_token": token, "password": PASSWORD, "next": "/"}).encode()
        self.opener.open(urllib.request.Request(self.base + "/login", data=body), timeout=30).close()
        if self.get("/live/state.json")[0] != 200:
            raise RuntimeError("login failed")


def judged(log_path: Path) -> int:
    return log_path.read_text().count("blindgate.device.agent: frame:")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase (default 30)")
    parser.add_argument("--fps", type=float, default=4.0, help="pictures per second the live view asks for (default 4)")
    args = parser.parse_args()
    if not FACES.is_dir():
        print(json.dumps({"error": f"face data not found at {FACES}"}))
        return 2
    from blindgate.device.cli import main as device_main
    from blindgate.shared.launch import CloudService, free_port, start_broker, write_device_config

    work = Path(tempfile.mkdtemp(prefix="bg-bench-console-"))
    broker = start_broker(work / "mosquitto")
    cloud = CloudService(work / "cloud", broker, work / "cloud.log")
    agent = None
    try:
        cloud.start()
        port = free_port()
        config = write_device_config(
            work / "door.toml",
            site="bench",
            cloud_url=cloud.url,
            broker=broker,
            state_dir=work / "door",
            camera=str(FACES / "video" / "short_hamilton_clip.mp4"),
            fps=10.0,
            realtime=True,
            loop=True,
            extra=f"[endpoint]\nport = {port}\n[console]\nlive_fps = {args.fps}\n",
        )
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        cli = [sys.executable, "-m", "blindgate.device.cli", "--config", str(config)]
        if device_main(["--config", str(config), *cloud.init_args()]) != 0:
            raise RuntimeError("init failed")
        lin = FACES / "people" / "lin_manuel_miranda" / "lin1.png"
        subprocess.run([*cli, "enroll", "Lin-Manuel Miranda", str(lin)], check=True, **quiet)
        subprocess.run([*cli, "console-password"], input=PASSWORD + "\n", text=True, check=True, **quiet)
        agent_log = work / "agent.log"
        with open(agent_log, "w") as out:
            agent = subprocess.Popen([*cli, "console"], stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while "door console:" not in agent_log.read_text():
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError(f"the console did not start: {agent_log.read_text()[-2000:]}")
            time.sleep(0.2)
        browser = Browser(base)
        browser.log_in()
        time.sleep(5)  # the door settles: models loaded, first replies in

        weight = {}
        for path in ("/", "/people", "/log", "/static/console.css", "/static/console.js", "/live/frame.jpg", "/live/state.json"):
            status, _, body = browser.get(path)
            weight[path] = {"status": status, "bytes": len(body)}
        first_load = sum(weight[p]["bytes"] for p in ("/", "/static/console.css", "/static/console.js", "/live/frame.jpg"))
        log(f"page weight: live page first load {first_load} B")

        def phase(watching: bool) -> dict:
            stop = threading.Event()
            got, new, last = [0], [0], [""]

            def view() -> None:
                next_state = 0.0
                while not stop.wait(1 / args.fps):
                    status, headers, _ = browser.get("/live/frame.jpg")
                    got[0] += status == 200
                    if headers.get("X-Frame") != last[0]:
                        new[0] += 1
                        last[0] = headers.get("X-Frame", "")
                    if time.monotonic() >= next_state:
                        browser.get("/live/state.json")
                        next_state = time.monotonic() + 0.5

            viewer = threading.Thread(target=view, daemon=True)
            if watching:
                viewer.start()
            cpu0, judged0, t0 = cpu_seconds(agent.pid), judged(agent_log), time.monotonic()
            time.sleep(args.seconds)
            cpu1, judged1, t1 = cpu_seconds(agent.pid), judged(agent_log), time.monotonic()
            stop.set()
            if watching:
                viewer.join(5)
            elapsed = t1 - t0
            result = {
                "door_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / elapsed, 1),
                "frames_judged_per_s": round((judged1 - judged0) / elapsed, 2),
            }
            if watching:
                result |= {"pictures_per_s": round(got[0] / elapsed, 2), "new_frames_per_s": round(new[0] / elapsed, 2)}
            log(f"{'live view open' if watching else 'nobody watching'}: {result}")
            return result

        idle = phase(False)
        open_view = phase(True)
        print(
            json.dumps(
                {
                    "benchmark": "console",
                    "camera": "Hamilton clip, 640x360, 10 frames/s, looped",
                    "live_fps_asked": args.fps,
                    "seconds_per_phase": args.seconds,
                    "page_weight_bytes": weight,
                    "live_page_first_load_bytes": first_load,
                    "nobody_watching": idle,
                    "live_view_open": open_view,
                    "added_cpu_percent_of_one_core": round(
                        open_view["door_cpu_percent_of_one_core"] - idle["door_cpu_percent_of_one_core"], 1
                    ),
                    "cpu_count": os.cpu_count(),
                },
                indent=2,
            )
        )
        return 0
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
        cloud.stop(20)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
