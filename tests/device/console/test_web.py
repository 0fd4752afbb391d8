"""The console's guard, attacked over HTTP (device/console/web.py and its routes), each with a positive control.

A real agent (no broker: RecordingLink), the endpoint's real app with the console added, the real
password file (scrypt), driven through aiohttp's test client. What is attacked: pages without a
login, a wrong or guessed password, a login form without its token, a state change without the
CSRF token or from another origin, an open redirect after login, a session after logout or a
password change, markup in a name, and a console served in the clear beyond loopback.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from dataclasses import replace
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from blindgate.device.access_store import AccessRuleFile
from blindgate.device.console import MAX_BODY, ConsoleConfigError, add_console, check_console_config
from blindgate.device.console.auth import set_password
from blindgate.device.console.live import Gate
from blindgate.device.endpoint import make_app, start_endpoint
from blindgate.device.metrics import DoorMetrics
from blindgate.device.people import People, Person
from blindgate.shared.config import ConsoleConfig, DecisionConfig, DeviceConfig, EndpointConfig

from ..fakes import AnsweringClient, RecordingLink
from ..test_agent_replies import DEVICE, SITE, sealed
from ..test_agent_replies import world as world  # noqa: F401  (the module-scoped fixture)
from ..test_agent_robustness import make_agent

PASSWORD = "correct horse battery"
ALICE = "a" * 32
PAGES = ["/", "/people", "/log"]
DATA = ["/live/state.json", "/live/frame.jpg", "/log.csv"]


@pytest.fixture
def door(world, tmp_path):
    config = DeviceConfig(
        site=SITE,
        device_id=DEVICE,
        state_dir=str(tmp_path),
        decision=DecisionConfig(frames_required=2, reply_timeout=2.0),
        console=ConsoleConfig(enabled=True),
    )
    link = RecordingLink(config)
    agent = make_agent(world, tmp_path, link)
    link.client = AnsweringClient(link, lambda req: sealed(world, req))
    link.on_connect(link.client, None, None, SimpleNamespace(is_failure=False), None)
    set_password(tmp_path, PASSWORD)
    yield agent
    agent.close()


@pytest_asyncio.fixture
async def client(door, aiohttp_client):
    app = make_app(door, DoorMetrics(), client_max_size=MAX_BODY)
    console = add_console(app, door, door.config)
    console.live.show(np.zeros((48, 64, 3), np.uint8), (), Gate.NO_FACE, "no face")  # a first picture
    return await aiohttp_client(app)


async def login_token(client) -> str:
    page = await client.get("/login")
    return re.search(r'name="login_token" value="([^"]+)"', await page.text()).group(1)


async def log_in(client, password=PASSWORD, next_page="/"):
    client.session.cookie_jar.clear()  # a fresh browser: a logged-in one is sent from /login to /
    token = await login_token(client)
    form = {"login_token": token, "password": password, "next": next_page}
    return await client.post("/login", data=form, allow_redirects=False)


async def csrf(client) -> str:
    page = await client.get("/people")
    return re.search(r'data-csrf="([^"]+)"', await page.text()).group(1)


def audit(tmp_path) -> list[dict]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- logging in ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_page_needs_a_login_and_the_endpoint_routes_stay_open(client, tmp_path):
    for path in PAGES:
        answer = await client.get(path, allow_redirects=False)
        assert answer.status == 303 and answer.headers["Location"].startswith("/login"), path
    for path in DATA:
        assert (await client.get(path)).status == 401, path
    answer = await client.post(f"/people/{ALICE}/disable", data={"csrf": "x"})
    assert answer.status == 401
    assert not (tmp_path / "access_rules.json").exists()
    assert (await client.get("/metrics")).status == 200  # the endpoint's own routes: counts only, as before
    assert (await client.get("/healthz")).status in (200, 503)
    assert (await client.get("/favicon.ico")).status == 404  # no such page: not the login form
    # Positive control: logged in, all of it answers.
    assert (await log_in(client)).status == 303
    for path in [*PAGES, *DATA]:
        assert (await client.get(path)).status == 200, path


@pytest.mark.asyncio
async def test_login_sets_a_strict_httponly_cookie_and_a_wrong_password_none(client, tmp_path):
    wrong = await log_in(client, "not the password")
    assert wrong.status == 401 and "blindgate_session" not in wrong.cookies
    assert "Wrong password" in await wrong.text()
    right = await log_in(client)
    assert right.status == 303
    cookie = right.cookies["blindgate_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain HTTP on loopback: a Secure cookie would never come back
    assert [e["action"] for e in audit(tmp_path) if e["kind"] == "console"] == ["login_failed", "login"]


@pytest.mark.asyncio
async def test_a_login_without_the_forms_token_is_refused(client):
    await client.get("/login")
    forged = await client.post("/login", data={"password": PASSWORD, "next": "/"}, allow_redirects=False)
    assert forged.status == 403 and "blindgate_session" not in forged.cookies
    other = await client.post("/login", data={"login_token": "x" * 32, "password": PASSWORD}, allow_redirects=False)
    assert other.status == 403
    assert (await log_in(client)).status == 303  # positive control


@pytest.mark.asyncio
async def test_guessing_is_slowed_after_five_failures_even_for_the_right_password(client, tmp_path):
    for _ in range(4):
        assert (await log_in(client, "guess")).status == 401
    assert (await log_in(client)).status == 303  # control: four misses do not lock anyone out
    for _ in range(6):  # five more free failures, then a lockout
        assert (await log_in(client, "guess")).status in (401, 429)
    locked = await log_in(client)
    assert locked.status == 429 and "wait" in await locked.text()
    assert "blindgate_session" not in locked.cookies


@pytest.mark.asyncio
async def test_after_login_only_a_local_page_is_the_next_stop(client):
    for target, expected in [("/people", "/people"), ("//evil.example/x", "/"), ("https://evil.example/", "/"), ("/\\evil", "/")]:
        answer = await log_in(client, next_page=target)
        assert answer.status == 303 and answer.headers["Location"] == expected, target


@pytest.mark.asyncio
async def test_logout_and_a_new_password_end_the_session(client, tmp_path):
    assert (await log_in(client)).status == 303
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["blindgate_session"].value
    token = await csrf(client)
    assert (await client.post("/logout", data={"csrf": token}, allow_redirects=False)).status == 303
    replayed = await client.get("/", cookies={"blindgate_session": cookie}, allow_redirects=False)
    assert replayed.status == 303  # the old cookie is dead
    assert (await log_in(client)).status == 303
    assert (await client.get("/", allow_redirects=False)).status == 200
    set_password(tmp_path, "another long password")
    assert (await client.get("/", allow_redirects=False)).status == 303  # made under the old password


@pytest.mark.asyncio
async def test_no_password_set_nobody_logs_in(client, tmp_path):
    (tmp_path / "console_password.json").unlink()
    page = await client.get("/login")
    assert "console-password" in await page.text()
    assert (await log_in(client)).status == 403


@pytest.mark.asyncio
async def test_a_corrupt_password_file_lets_nobody_in_and_breaks_nothing_else(client, tmp_path):
    (tmp_path / "console_password.json").write_text("{not json")
    assert (await log_in(client)).status == 403
    assert (await client.get("/metrics")).status == 200
    set_password(tmp_path, PASSWORD)  # the fix the log line names
    assert (await log_in(client)).status == 303


# -- changing things --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_change_needs_the_sessions_csrf_token(client, tmp_path, aiohttp_client, door):
    assert (await log_in(client)).status == 303
    rules = AccessRuleFile(tmp_path)
    missing = await client.post(f"/people/{ALICE}/disable", data={}, allow_redirects=False)
    assert missing.status == 403
    wrong = await client.post(f"/people/{ALICE}/disable", data={"csrf": "A" * 43}, allow_redirects=False)
    assert wrong.status == 403
    assert ALICE not in rules.read().people  # nothing written
    # Another browser's valid token does not work in this session.
    other = await aiohttp_client(client.app)
    assert (await log_in(other)).status == 303
    foreign = await client.post(f"/people/{ALICE}/disable", data={"csrf": await csrf(other)}, allow_redirects=False)
    assert foreign.status == 403 and ALICE not in rules.read().people
    # Positive control: the page's own token (form field, or header for scripts).
    ok = await client.post(f"/people/{ALICE}/disable", data={"csrf": await csrf(client)}, allow_redirects=False)
    assert ok.status == 303 and rules.read().people[ALICE].enabled is False
    ok = await client.post(f"/people/{ALICE}/enable", headers={"X-CSRF-Token": await csrf(client)}, allow_redirects=False)
    assert ok.status == 303 and rules.read().person(ALICE).enabled is True
    assert [e["action"] for e in audit(tmp_path) if e["kind"] == "console"][-2:] == ["disable", "enable"]


@pytest.mark.asyncio
async def test_a_post_from_another_origin_is_refused(client, tmp_path):
    assert (await log_in(client)).status == 303
    token = await csrf(client)
    evil = await client.post(
        f"/people/{ALICE}/disable", data={"csrf": token}, headers={"Origin": "http://evil.example"}, allow_redirects=False
    )
    assert evil.status == 403 and not (tmp_path / "access_rules.json").exists()
    own = f"http://{client.host}:{client.port}"
    ok = await client.post(f"/people/{ALICE}/disable", data={"csrf": token}, headers={"Origin": own}, allow_redirects=False)
    assert ok.status == 303


@pytest.mark.asyncio
async def test_bad_input_is_refused_with_a_message_and_nothing_changes(client, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(People, "enroll", lambda self, *a, **k: calls.append(a))
    monkeypatch.setattr(People, "remove", lambda self, *a, **k: calls.append(a))
    assert (await log_in(client)).status == 303
    token = await csrf(client)
    form = aiohttp.FormData({"csrf": token, "name": "Mallory"})
    form.add_field("photos", b"this is no image", filename="note.jpg", content_type="image/jpeg")
    page = await client.post("/people/enroll", data=form)
    assert "Nothing was enrolled" in await page.text() and "cannot decode image" in await page.text()
    page = await client.post(f"/people/{ALICE}/remove", data={"csrf": token})
    assert "Tick the box" in await page.text()
    page = await client.post(f"/people/{ALICE}/hours", data={"csrf": token, "hours": "someday 25:00-26:00"})
    assert "Nothing changed" in await page.text()
    assert calls == [] and not (tmp_path / "access_rules.json").exists()
    # Positive control: good hours are stored.
    await client.post(f"/people/{ALICE}/hours", data={"csrf": token, "hours": "mon-fri 07:00-19:00"})
    assert [str(w) for w in AccessRuleFile(tmp_path).read().people[ALICE].windows] == ["mon-fri 07:00-19:00"]


# -- what the pages show ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_names_are_text_never_markup(client, monkeypatch):
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    monkeypatch.setattr(People, "listing", lambda self: (1, [Person(ALICE, evil, 0)]))
    assert (await log_in(client)).status == 303
    html = await (await client.get("/people")).text()
    assert "&lt;script&gt;" in html and "<script>alert" not in html and "<img src=x" not in html


@pytest.mark.asyncio
async def test_pages_forbid_framing_caching_and_foreign_scripts(client):
    assert (await log_in(client)).status == 303
    for path in ["/", "/login", "/live/state.json"]:
        headers = (await client.get(path)).headers
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store", path


@pytest.mark.asyncio
async def test_the_log_filters_and_exports_csv(client, door):
    door.audit.write(kind="event", event="recognized", subject=ALICE, label="Alice")
    door.audit.write(kind="event", event="unknown")
    door.audit.write(kind="event", event="denied", subject=ALICE, label="=HYPERLINK(1)", reason="disabled")
    assert (await log_in(client)).status == 303
    html = await (await client.get("/log?person=alice")).text()
    assert 'data-event="recognized"' in html and 'data-event="unknown"' not in html
    csv_text = await (await client.get("/log.csv?event=denied")).text()
    assert csv_text.splitlines()[0] == "time,event,person,subject,reason,detail"
    assert "'=HYPERLINK(1)" in csv_text and "recognized" not in csv_text
    assert (await client.get("/log?day=2024-13-45")).status == 400


# -- where it may listen --------------------------------------------------------------------------


def test_plain_http_beyond_loopback_and_half_a_tls_setup_are_refused():
    loopback = DeviceConfig(console=ConsoleConfig(enabled=True))
    check_console_config(loopback)  # positive control
    lan = replace(loopback, endpoint=EndpointConfig(host="0.0.0.0"))
    with pytest.raises(ConsoleConfigError, match="plain HTTP"):
        check_console_config(lan)
    check_console_config(replace(lan, console=ConsoleConfig(enabled=True, allow_plain_http=True)))
    with pytest.raises(ConsoleConfigError, match="go together"):
        check_console_config(replace(lan, console=ConsoleConfig(enabled=True, tls_cert="/x.pem")))


def test_with_tls_the_console_serves_https_and_the_cookie_is_secure(door, tmp_path):
    from tests.tls_ca import make_test_ca

    tls = make_test_ca(tmp_path / "tls")
    config = replace(
        door.config,
        endpoint=EndpointConfig(host="127.0.0.1", port=0),
        console=ConsoleConfig(enabled=True, tls_cert=str(tls.cert_file), tls_key=str(tls.key_file)),
    )
    door.config = config
    endpoint = start_endpoint(config, door)
    assert endpoint is not None and endpoint.url.startswith("https://")
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        with urllib.request.urlopen(f"{endpoint.url}/login", context=context, timeout=10) as page:
            cookie = page.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert page.headers["Strict-Transport-Security"]
        with pytest.raises(Exception):  # noqa: B017 - plain HTTP on the TLS port gets no page
            urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/login", timeout=10)
    finally:
        endpoint.stop()
