"""The console's security primitives: the hashed admin password, sessions, CSRF, login throttling, the CLI command."""

from __future__ import annotations

import argparse
import base64
import io
import json
import stat

import pytest

from blindgate.device.console import auth
from blindgate.device.console.auth import (
    MIN_PASSWORD_LENGTH,
    PASSWORD_FILE,
    AdminPassword,
    ConsoleAuthError,
    LoginLimiter,
    Sessions,
    csrf_ok,
    read_new_password,
    set_password,
)
from blindgate.device.console.password_cli import add_console_password_command
from blindgate.shared.config import DeviceConfig
from blindgate.shared.errors import BlindgateError

PW = "correct horse battery"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One state directory with PW set (scrypt is slow: shared by the read-only tests)."""
    state = tmp_path_factory.mktemp("state")
    set_password(state, PW)
    return state


# --- the admin password -------------------------------------------------------------------------


def test_round_trip_and_wrong_passwords(stored):
    password = AdminPassword.load(stored)
    assert password is not None
    assert password.verify(PW)  # positive control
    for wrong in ("correct horse batterY", PW + " ", "", "x" * 2000):
        assert not password.verify(wrong)
    assert PW not in repr(password) and "hash" not in repr(password)


def test_file_is_private_scrypt_json_without_the_password(stored):
    path = stored / PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PW.encode() not in path.read_bytes()
    body = json.loads(path.read_text())
    assert (body["kdf"], body["n"], body["r"], body["p"]) == ("scrypt", 2**15, 8, 1)
    assert len(base64.b64decode(body["salt"])) == 16 and len(base64.b64decode(body["hash"])) == 32
    assert body["set"].endswith("+00:00")
    assert not [p for p in stored.iterdir() if p.name != PASSWORD_FILE]  # no temporary file left


def test_parameters_come_from_the_file(tmp_path, stored):
    """A file with other (e.g. raised) scrypt parameters still verifies: nothing is hard-wired at load."""
    body = json.loads((stored / PASSWORD_FILE).read_text())
    body.update(n=2**14, r=4)
    body["hash"] = base64.b64encode(auth._scrypt(PW, base64.b64decode(body["salt"]), 2**14, 4, 1, 32)).decode()
    (tmp_path / PASSWORD_FILE).write_text(json.dumps(body))
    password = AdminPassword.load(tmp_path)
    assert password is not None and (password.n, password.r) == (2**14, 4)
    assert password.verify(PW) and not password.verify(PW + "!")


def test_setting_again_changes_salt_and_fingerprint(tmp_path):
    set_password(tmp_path, PW)
    first = AdminPassword.load(tmp_path)
    salt1 = json.loads((tmp_path / PASSWORD_FILE).read_text())["salt"]
    set_password(tmp_path, PW)  # the same password again
    second = AdminPassword.load(tmp_path)
    salt2 = json.loads((tmp_path / PASSWORD_FILE).read_text())["salt"]
    assert first is not None and second is not None
    assert salt1 != salt2
    assert first.fingerprint != second.fingerprint and len(second.fingerprint) == 16
    assert second.fingerprint == AdminPassword.load(tmp_path).fingerprint  # stable while unchanged
    assert second.verify(PW)


def test_no_file_is_none(tmp_path):
    assert AdminPassword.load(tmp_path) is None
    assert AdminPassword.load(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"kdf": "pbkdf2"}',
        json.dumps({"kdf": "scrypt", "n": 2**15, "r": 8, "p": 1, "salt": "!!!", "hash": "AAAAAAAAAAAAAAAAAAAAAA=="}).encode(),
        json.dumps({"kdf": "scrypt", "n": 3000, "r": 8, "p": 1}).encode(),
        json.dumps({"kdf": "scrypt", "n": 2**24, "r": 64, "p": 16, "salt": "A" * 24, "hash": "A" * 44}).encode(),  # 8 GiB
        json.dumps({"kdf": "scrypt", "n": "32768", "r": 8, "p": 1, "salt": "A" * 24, "hash": "A" * 44}).encode(),
        json.dumps({"kdf": "scrypt", "n": 2**15, "r": 8, "p": 1, "salt": "AAAA", "hash": "A" * 44}).encode(),  # 3-byte salt
        json.dumps({"kdf": "scrypt", "n": 2**15, "r": 8, "p": 1, "salt": "A" * 24, "hash": "A" * 200}).encode(),  # 150-byte key
    ],
)
def test_corrupt_file_names_the_file_and_the_command(tmp_path, content):
    (tmp_path / PASSWORD_FILE).write_bytes(content)
    with pytest.raises(ConsoleAuthError) as caught:
        AdminPassword.load(tmp_path)
    assert str(tmp_path / PASSWORD_FILE) in str(caught.value)
    assert "blindgate-device console-password" in str(caught.value)
    assert isinstance(caught.value, BlindgateError) and isinstance(caught.value, ValueError)


def test_unreadable_file_is_an_error(tmp_path):
    (tmp_path / PASSWORD_FILE).mkdir()  # reading a directory fails even as root
    with pytest.raises(ConsoleAuthError, match="cannot be read"):
        AdminPassword.load(tmp_path)


@pytest.mark.parametrize(
    "bad, reason",
    [("Zq9!kT", "too short"), ("x" * (MIN_PASSWORD_LENGTH - 1), "too short"), (" " * 20, "whitespace"), ("x" * 1025, "too long")],
)
def test_weak_or_long_password_refused_and_old_file_untouched(tmp_path, bad, reason):
    set_password(tmp_path, PW)
    before = (tmp_path / PASSWORD_FILE).read_bytes()
    with pytest.raises(ConsoleAuthError, match=reason) as caught:
        set_password(tmp_path, bad)
    assert bad.strip() == "" or bad not in str(caught.value)  # never echoes the password
    assert (tmp_path / PASSWORD_FILE).read_bytes() == before
    assert AdminPassword.load(tmp_path).verify(PW)


def test_boundary_lengths_accepted(tmp_path):
    set_password(tmp_path, "x" * MIN_PASSWORD_LENGTH)
    assert AdminPassword.load(tmp_path).verify("x" * MIN_PASSWORD_LENGTH)
    auth.check_new_password("y" * 1024)  # the longest allowed (not hashed: checking is enough)


def test_unicode_forms_match(tmp_path):
    """The same accented password typed composed or decomposed verifies (NFC)."""
    set_password(tmp_path, "caf\u00e9 au lait!")
    assert AdminPassword.load(tmp_path).verify("cafe\u0301 au lait!")


# --- sessions -----------------------------------------------------------------------------------


def test_session_lifecycle_and_absolute_expiry():
    clock = FakeClock()
    sessions = Sessions(lifetime_s=100, idle_s=60, clock=clock)
    s = sessions.create("fp1")
    assert s.token != s.csrf and len(s.token) >= 43 and s.fingerprint == "fp1"
    assert s.token not in repr(s) and s.csrf not in repr(s)
    for _ in range(3):  # keep it active: idle never hits, but the absolute lifetime does
        clock.now += 30
        assert sessions.get(s.token, "fp1") is not None
    clock.now += 10  # 100 s after creation
    assert sessions.get(s.token, "fp1") is None
    assert len(sessions) == 0  # dropped


def test_idle_timeout_and_refresh():
    clock = FakeClock()
    sessions = Sessions(lifetime_s=1000, idle_s=60, clock=clock)
    s = sessions.create("fp")
    clock.now += 59
    got = sessions.get(s.token, "fp")
    assert got is not None and got.last_seen == clock.now  # refreshed
    clock.now += 59
    assert sessions.get(s.token, "fp") is not None  # 118 s old, but seen 59 s ago
    clock.now += 60
    assert sessions.get(s.token, "fp") is None
    clock.now -= 100  # once dropped, it stays dropped
    assert sessions.get(s.token, "fp") is None


def test_password_change_kills_sessions(tmp_path):
    set_password(tmp_path, PW)
    sessions = Sessions()
    s = sessions.create(AdminPassword.load(tmp_path).fingerprint)
    assert sessions.get(s.token, AdminPassword.load(tmp_path).fingerprint) is not None  # positive control
    set_password(tmp_path, PW + "2")
    assert sessions.get(s.token, AdminPassword.load(tmp_path).fingerprint) is None
    assert len(sessions) == 0


def test_forged_or_unknown_tokens_get_nothing():
    sessions = Sessions()
    s = sessions.create("fp")
    assert sessions.get(s.token, "fp") is not None  # positive control
    for forged in (None, "", s.token[:-1], s.token + "A", s.token.upper(), s.csrf, "x" * 10_000, "\udcff"):
        assert sessions.get(forged, "fp") is None
    assert sessions.get(s.token, "fp") is not None  # probing did not disturb it


def test_eviction_drop_and_drop_all():
    clock = FakeClock()
    sessions = Sessions(max_sessions=3, clock=clock)
    made = []
    for _ in range(4):
        made.append(sessions.create("fp"))
        clock.now += 1
    assert len(sessions) == 3
    assert sessions.get(made[0].token, "fp") is None  # the oldest went
    assert all(sessions.get(s.token, "fp") for s in made[1:])
    sessions.drop(made[1].token)
    sessions.drop("unknown")
    sessions.drop(None)
    assert sessions.get(made[1].token, "fp") is None and sessions.get(made[2].token, "fp") is not None
    sessions.drop_all()
    assert len(sessions) == 0 and sessions.get(made[3].token, "fp") is None


def test_expired_sessions_are_pruned_before_evicting_live_ones():
    clock = FakeClock()
    sessions = Sessions(idle_s=10, max_sessions=2, clock=clock)
    stale = sessions.create("fp")
    clock.now += 5
    live = sessions.create("fp")
    clock.now += 6  # stale idle for 11 s, live for 6 s
    sessions.create("fp")
    assert sessions.get(live.token, "fp") is not None
    assert sessions.get(stale.token, "fp") is None


def test_csrf_ok():
    sessions = Sessions()
    a, b = sessions.create("fp"), sessions.create("fp")
    assert csrf_ok(a, a.csrf)  # positive control
    for bad in (None, "", b.csrf, a.token, a.csrf[:-1], a.csrf + "x", "\u00e9" * 43):
        assert not csrf_ok(a, bad)


def test_bad_session_settings_refused():
    with pytest.raises(ConsoleAuthError):
        Sessions(max_sessions=0)
    with pytest.raises(ConsoleAuthError):
        Sessions(idle_s=0)


# --- login throttling ---------------------------------------------------------------------------


def limiter(clock, **kw):
    return LoginLimiter(clock=clock, free_failures=3, window_s=900, first_lockout_s=30, max_lockout_s=200, **kw)


def test_free_failures_then_lockout_doubling_up_to_the_cap():
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(3):
        assert lim.wait_s("10.0.0.1") == 0
        lim.failed("10.0.0.1")
    assert lim.wait_s("10.0.0.1") == 0  # three failures are free
    waits = []
    for _ in range(5):
        lim.failed("10.0.0.1")
        waits.append(lim.wait_s("10.0.0.1"))
        clock.now += waits[-1]  # the attacker waits out each lockout
        assert lim.wait_s("10.0.0.1") == 0
    assert waits == [30, 60, 120, 200, 200]  # doubling, capped
    assert lim.wait_s("10.0.0.2") == 0  # another address is not affected


def test_lockout_is_partially_elapsed_and_then_forgotten():
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(4):
        lim.failed("a")
    clock.now += 10
    assert lim.wait_s("a") == pytest.approx(20)
    clock.now += 20 + 899  # lockout over, but not yet a quiet window after it
    lim.failed("a")
    assert lim.wait_s("a") == 60  # still counted: the doubling continues
    clock.now += 60 + 900
    lim.failed("a")
    assert lim.wait_s("a") == 0  # a quiet window later, the count starts again


def test_succeeded_clears_the_address():
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(5):
        lim.failed("a")
    assert lim.wait_s("a") > 0
    lim.succeeded("a")
    assert lim.wait_s("a") == 0
    for _ in range(3):
        lim.failed("a")
    assert lim.wait_s("a") == 0  # the free failures are back


def test_global_limit_against_distributed_guessing():
    clock = FakeClock()
    lim = limiter(clock, global_failures=20)
    for i in range(20):  # each address stays within its free failures
        lim.failed(f"192.0.2.{i}")
        clock.now += 1
    assert lim.wait_s("198.51.100.7") == 0  # 20 failures: not more than the limit yet
    lim.failed("192.0.2.99")
    assert lim.wait_s("198.51.100.7") == 30  # everyone waits
    assert lim.wait_s("192.0.2.1") == 30
    clock.now += 30
    assert lim.wait_s("198.51.100.7") == 0
    lim.failed("192.0.2.98")  # still more than 20 within the window: every failure re-arms it
    assert lim.wait_s("198.51.100.7") == 30
    clock.now += 900
    lim.failed("192.0.2.97")
    assert lim.wait_s("198.51.100.7") == 0  # the old failures left the window


def test_ipv6_counts_per_64_prefix():
    clock = FakeClock()
    lim = limiter(clock)
    for i in range(4):
        lim.failed(f"2001:db8:1:2::{i + 1:x}")  # one host rotating its interface id
    assert lim.wait_s("2001:db8:1:2:ffff::9") == 30
    assert lim.wait_s("2001:db8:1:3::1") == 0
    assert auth.address_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert auth.address_key("") == auth.address_key(None) == "unknown"


def test_memory_is_bounded():
    clock = FakeClock()
    lim = LoginLimiter(clock=clock, global_failures=10**6)
    for i in range(3000):
        lim.failed(f"10.{i // 256}.{i % 256}.1")
    assert len(lim) == auth.MAX_TRACKED_ADDRESSES
    lim2 = LoginLimiter(clock=clock, free_failures=0, max_addresses=2, global_failures=10**6)
    for address in ("a", "b", "c"):
        lim2.failed(address)
    assert len(lim2) == 2
    assert lim2.wait_s("a") == 0 and lim2.wait_s("c") == 30  # the least recently failing went


def test_bad_limiter_settings_refused():
    with pytest.raises(ConsoleAuthError):
        LoginLimiter(first_lockout_s=60, max_lockout_s=30)
    with pytest.raises(ConsoleAuthError):
        LoginLimiter(global_failures=0)


# --- reading a new password, and the CLI command ------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def answers(*replies):
    queue = list(replies)
    asked = []

    def prompt(text: str) -> str:
        asked.append(text)
        return queue.pop(0)

    prompt.asked = asked  # type: ignore[attr-defined]
    return prompt


def test_read_new_password_from_a_pipe_and_a_terminal():
    assert read_new_password(io.StringIO(PW + "\n" + "ignored\n")) == PW
    assert read_new_password(io.StringIO(" spaced pw kept \r\n")) == " spaced pw kept "
    with pytest.raises(ConsoleAuthError, match="no password"):
        read_new_password(io.StringIO(""))
    prompt = answers(PW, PW)
    assert read_new_password(FakeTTY(), prompt) == PW and len(prompt.asked) == 2
    with pytest.raises(ConsoleAuthError, match="differ"):
        read_new_password(FakeTTY(), answers(PW, PW + "x"))


def run_cli(config, monkeypatch, stdin):
    common = argparse.ArgumentParser(add_help=False)
    parser = argparse.ArgumentParser(prog="blindgate-device", parents=[common])
    table = add_console_password_command(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(["console-password"])
    monkeypatch.setattr("sys.stdin", stdin)
    return table[args.command](config, args)


def test_cli_sets_the_password_from_stdin(tmp_path, monkeypatch, capsys):
    state = tmp_path / "new" / "state"
    assert run_cli(DeviceConfig(state_dir=str(state)), monkeypatch, io.StringIO(PW + "\n")) == 0
    assert capsys.readouterr().out.strip() == "console password set; sessions made before it end"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert AdminPassword.load(state).verify(PW)


def test_cli_at_a_terminal_refuses_a_mismatch_and_a_short_password(tmp_path, monkeypatch):
    config = DeviceConfig(state_dir=str(tmp_path))
    monkeypatch.setattr("getpass.getpass", answers(PW, PW + "!"))
    with pytest.raises(ConsoleAuthError, match="differ"):
        run_cli(config, monkeypatch, FakeTTY())
    monkeypatch.setattr("getpass.getpass", answers("short", "short"))
    with pytest.raises(ConsoleAuthError, match="too short"):
        run_cli(config, monkeypatch, FakeTTY())
    assert not (tmp_path / PASSWORD_FILE).exists()
    monkeypatch.setattr("getpass.getpass", answers(PW, PW))
    assert run_cli(config, monkeypatch, FakeTTY()) == 0  # positive control
    assert AdminPassword.load(tmp_path).verify(PW)


def test_cli_help_text():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_console_password_command(sub, argparse.ArgumentParser(add_help=False))
    assert "(stored hashed in the state directory)" in " ".join(parser.format_help().split())
