"""The console in a real browser: Debian's chromium through chromium-driver (Selenium), headless.

Against the real system: Mosquitto, the cloud service, and `blindgate-device console` as a
subprocess whose camera is the Hamilton clip (looped, at its own pace) and whose lock is
gpiozero's mock pin. The browser logs in (a wrong password first), sees the live picture change,
enrolls Lin-Manuel Miranda at the camera following the guidance, watches the door open for him,
disables him on the People page and watches the door stay shut (denied), then finds both in the
Log page and its CSV. Every wait is on page state (WebDriverWait), never a fixed sleep.
Screenshots go to test-artifacts/console/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blindgate.device.cli import main as device_main
from blindgate.shared.launch import free_port, write_device_config

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"
NAME = "Lin-Manuel Miranda"
OPEN_S = 3.0  # long enough for the page's state poll (every 0.5 s) to see the door open

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def console_url(mqtt_broker, cloud, faces_dir, tmp_path_factory):
    """A provisioned door running `blindgate-device console` on the clip; yields its URL."""
    work = tmp_path_factory.mktemp("console")
    clip = faces_dir / "video" / "short_hamilton_clip.mp4"
    config = write_device_config(
        work / "door.toml",
        site="console",
        cloud_url=cloud.url,
        broker=mqtt_broker,
        state_dir=work / "door",
        camera=str(clip),
        fps=10.0,
        realtime=True,
        decision={"open_seconds": OPEN_S},
        loop=True,
        extra=f"[endpoint]\nport = {free_port()}\n",
    )
    assert device_main(["--config", str(config), *cloud.init_args()]) == 0
    cli = [sys.executable, "-m", "blindgate.device.cli", "--config", str(config)]
    # The password through the real CLI, from stdin as a script would give it.
    subprocess.run([*cli, "console-password"], input=PASSWORD + "\n", text=True, check=True, timeout=60)
    log_path = work / "agent.log"
    with open(log_path, "w") as log:
        agent = subprocess.Popen([*cli, "console"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline and agent.poll() is None:
            found = re.search(r"door console: (http://\S+)", log_path.read_text())
            url = found.group(1).rstrip("/") if found else None
            time.sleep(0.1)
        if url is None:
            pytest.fail(f"the console did not start:\n{log_path.read_text()[-3000:]}")
        yield url, work
    finally:
        agent.terminate()
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()


@pytest.fixture(scope="module")
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"no {CHROMIUM} / {CHROMEDRIVER}: install Debian's chromium and chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait(driver, seconds: float, condition, what: str):
    try:
        # The Live page rebuilds its lists twice a second: an element read mid-swap is stale, so read again.
        ignored = (StaleElementReferenceException, NoSuchElementException)
        return WebDriverWait(driver, seconds, poll_frequency=0.1, ignored_exceptions=ignored).until(lambda d: condition(d))
    except TimeoutException:
        shot(driver, f"failed-{re.sub(r'[^a-z0-9]+', '-', what.lower())}")
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for: {what}") from None


def text_of(driver, css: str) -> str:
    """The element's text read in one script call (no stale references), "" when absent."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", css)


def decisions(driver, event: str) -> int:
    """How many of the Live page's latest decisions are `event` for him."""
    css = f'#decisions li[data-event="{event}"][data-label="{NAME}"]'
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length;", css)


def log_in(driver, url: str, password: str) -> None:
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()


def test_console_scenario_in_a_real_browser(browser, console_url):
    url, work = console_url
    b = browser

    # Logged out: every page leads to the login form; a wrong password is refused.
    b.get(url + "/people")
    wait(b, 20, lambda d: d.find_elements(By.ID, "password"), "the login form")
    log_in(b, url, "not the password")
    wait(b, 20, lambda d: "Wrong password" in text_of(d, "#login-error"), "the wrong password refused")
    shot(b, "01-login-refused")
    log_in(b, url, PASSWORD)
    wait(b, 20, lambda d: d.current_url.rstrip("/").endswith("/people"), "the page asked for, after logging in")

    # The live picture changes (frame numbers move on) and the door's state is shown.
    b.get(url + "/")
    img = wait(
        b,
        30,
        lambda d: d.find_element(By.ID, "live") if int(d.find_element(By.ID, "live").get_attribute("data-frame") or 0) else None,
        "a first picture",
    )  # noqa: E501
    first = int(img.get_attribute("data-frame"))
    wait(b, 30, lambda d: int(d.find_element(By.ID, "live").get_attribute("data-frame")) > first, "the picture to change")
    assert img.get_attribute("src").startswith("blob:")
    wait(b, 30, lambda d: text_of(d, "#cloud") == "reachable" and text_of(d, "#lock") == "locked", "cloud reachable, door locked")
    shot(b, "02-live")

    # Enroll at the camera, following the guidance, until the enrollment is done.
    b.find_element(By.ID, "capture-name").send_keys(NAME)
    b.find_element(By.ID, "capture-go").click()
    advice = wait(b, 60, lambda d: text_of(d, "#capture-advice"), "guidance during the capture")
    assert re.search(r"\(\d of 5\)", advice), advice
    shot(b, "03-capturing")
    state = 'document.getElementById("capture").dataset.state'
    wait(b, 120, lambda d: d.execute_script(f"return {state};") in ("done", "failed"), "the capture to end")
    shot(b, "04-enrolled")
    assert b.execute_script(f"return {state};") == "done", text_of(b, "#capture-message")
    assert f"enrolled {NAME}" in text_of(b, "#capture-message")

    # The door opens for him: the live view shows the decision and the lock open.
    wait(b, 120, lambda d: decisions(d, "recognized"), f"the door to recognize {NAME}")
    wait(b, 30, lambda d: text_of(d, "#lock") == "unlocked", "the lock to show open")
    shot(b, "05-door-open")

    # Disable him on the People page.
    b.get(url + "/people")
    person = wait(b, 30, lambda d: d.find_element(By.CSS_SELECTOR, f'li.person[data-name="{NAME}"]'), "him in the list")
    assert person.get_attribute("data-enabled") == "yes"
    person.find_element(By.CSS_SELECTOR, "button.toggle").click()
    wait(
        b,
        30,
        lambda d: d.find_element(By.CSS_SELECTOR, f'li.person[data-name="{NAME}"]').get_attribute("data-enabled") == "no",
        "him disabled",
    )
    shot(b, "06-disabled")

    # Back on the live view: he is refused and the door stays shut.
    b.get(url + "/")
    wait(b, 30, lambda d: text_of(d, "#lock") == "locked", "the hold-open time of his last visit to end")
    seen_lock: set[str] = set()

    def denied_while_shut(d):
        seen_lock.add(text_of(d, "#lock"))
        return decisions(d, "denied")

    wait(b, 120, denied_while_shut, f"the door to deny {NAME}")
    deadline = time.monotonic() + 2 * OPEN_S  # a recognized-and-opened frame would show within this
    while time.monotonic() < deadline:
        seen_lock.add(text_of(b, "#lock"))
        time.sleep(0.1)
    assert "unlocked" not in seen_lock, seen_lock
    shot(b, "07-denied")
    audit = [json.loads(line) for line in (work / "door" / "audit.jsonl").read_text().splitlines()]
    disabled_at = next(i for i, e in enumerate(audit) if e.get("kind") == "console" and e.get("action") == "disable")
    after = [e.get("event") for e in audit[disabled_at:] if e.get("kind") == "event" and e.get("label") == NAME]
    assert "denied" in after and "recognized" not in after, after

    # The log holds both, filtered by person; the CSV export too.
    b.get(url + "/log?person=Lin")
    rows = b.find_elements(By.CSS_SELECTOR, "#log tbody tr[data-event]")
    events = {r.get_attribute("data-event") for r in rows}
    assert {"recognized", "denied"} <= events, events
    assert all(r.get_attribute("data-person") == NAME for r in rows)
    shot(b, "08-log")
    csv_text = b.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/log.csv?person=Lin', {credentials: 'same-origin'}).then(r => r.text()).then(done, e => done('ERR ' + e));"
    )
    assert csv_text.startswith("time,event,person"), csv_text[:200]
    assert ",recognized," in csv_text and ",denied," in csv_text

    # A phone's screen: nothing wider than the screen.
    b.set_window_size(390, 844)
    b.get(url + "/")
    wait(b, 30, lambda d: int(d.find_element(By.ID, "live").get_attribute("data-frame") or 0) > 0, "the picture on a phone")
    overflow = b.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    shot(b, "09-phone")
    assert overflow <= 1, f"the page is {overflow} px wider than a phone screen"
