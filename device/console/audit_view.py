"""The web console's view of the door's audit log (device/audit.py): newest first, filtered, exported as CSV.

The log is append-only JSON lines and grows to megabytes, so it is read backwards in blocks from its end:
the first page costs a few blocks, not the whole file. The agent appends while the console reads; every
read opens its own handle and stops at the size it saw, and the bytes after the last newline (a line the
agent is still writing) are skipped, as is any line that is not a well-formed entry (a crash mid-write).

Times are stored in UTC; the console shows them, and filters by day, in the door's time zone
(`[access] timezone`, the same zone the access rules use). Names in the log are user input: the CSV
export neutralises cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from blindgate.device.access_store import door_timezone
from blindgate.device.decision import DoorEvent
from blindgate.shared.errors import BlindgateError

# How much of the log one read takes; the first page of a busy log usually fits in one or two.
BLOCK_SIZE = 64 * 1024
# A line longer than this is no entry the agent wrote: skipped instead of buffered.
MAX_LINE = 1024 * 1024
# Filter texts are capped: they come from a URL.
MAX_FILTER_CHARS = 100
# A value shown in `detail` longer than this is cut (a free-text message, never a whole blob).
MAX_DETAIL_VALUE = 200
# Rows per CSV chunk: large enough to stream efficiently, small enough to start at once.
CSV_ROWS_PER_CHUNK = 200
# Fields the row shows in columns of their own, and fields not worth showing (random per-request nonces).
_COLUMN_FIELDS = frozenset({"ts", "kind", "event", "label", "subject", "reason"})
_HIDDEN_FIELDS = frozenset({"request_id", "claim_id"})
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Every entry starts so (AuditLog.write puts "ts" first), which lets the day filter skip lines without parsing them.
_TS_PREFIX = b'{"ts": "'
_TS_LEN = len("2024-01-01T00:00:00.000Z")
# Cells a spreadsheet would read as a formula (or a DDE call) when they start with one of these.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_HEADER = ("time", "event", "person", "subject", "reason", "detail")


class AuditViewError(BlindgateError, ValueError):
    """A console query the audit view cannot honour (a malformed day, a bad limit)."""


class AuditKind(StrEnum):
    """The `kind` of audit entries the door writes (device/agent.py, device/claim_gate.py, device/console/)."""

    EVENT = "event"  # a door event: its `event` is a DoorEvent value
    LOCK = "lock"
    DOUBT = "doubt"
    REPLY_REJECTED = "reply_rejected"
    REPLIES_DROPPED = "replies_dropped"
    CLAIM_ACCEPTED = "claim_accepted"
    CLAIM_REJECTED = "claim_rejected"
    CLAIM_FAILED = "claim_failed"
    CLAIM_USED = "claim_used"
    CONSOLE = "console"  # a change or login at the web console: `action`, `address` (device/console/web.py)


@dataclass(frozen=True)
class AuditFilter:
    """What the console asks for; empty fields match everything."""

    person: str = ""  # a case-insensitive part of the name, or a subject id exactly
    event: str = ""  # an entry's event, or its kind for entries without one
    day: date | None = None  # a calendar day in the door's time zone

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> AuditFilter:
        """From URL query parameters `person`, `event`, `day` (YYYY-MM-DD); texts are capped, a bad day is an error."""
        person = str(query.get("person", "")).strip()[:MAX_FILTER_CHARS]
        event = str(query.get("event", "")).strip()[:MAX_FILTER_CHARS]
        day_text = str(query.get("day", "")).strip()
        return cls(person=person, event=event, day=_parse_day(day_text) if day_text else None)

    def matches(self, row: AuditRow) -> bool:
        """Does `row` pass every filter set? (The day is compared in the zone `row.when` carries.)"""
        if self.event and row.event.casefold() != self.event.casefold():
            return False
        if self.person and not (row.subject == self.person or self.person.casefold() in row.label.casefold()):
            return False
        return self.day is None or row.when.date() == self.day


def _parse_day(text: str) -> date:
    if _DAY.fullmatch(text) is None:
        raise AuditViewError(f"day {text[:20]!r} is not a date like 2024-05-31")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise AuditViewError(f"day {text!r} is no calendar date (month 01-12, a day the month has)") from None


@dataclass(frozen=True)
class AuditRow:
    """One audit entry as the console shows it."""

    when: datetime  # aware, in the door's time zone
    kind: str
    event: str  # the entry's event, else its kind: what the event filter compares
    person: str  # the name (label) if the entry has one, else the subject id, else ""
    subject: str
    reason: str
    detail: str  # the entry's other fields, "key=value; ..." (request and claim nonces left out)
    label: str = ""  # the decrypted name alone (the person filter's substring match)


def parse_entry(entry: Any, zone: tzinfo) -> AuditRow | None:
    """An entry (a decoded JSON line) as a row, None when it is not an audit entry (no dict, no kind, bad time)."""
    if not isinstance(entry, dict):
        return None
    kind, ts = entry.get("kind"), entry.get("ts")
    if not isinstance(kind, str) or not kind or not isinstance(ts, str):
        return None
    try:
        stamp = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if stamp.tzinfo is None:  # AuditLog always writes UTC with a Z: a naive time is no entry of ours
        return None
    event = _text(entry.get("event")) or kind
    label, subject = _text(entry.get("label")), _text(entry.get("subject"))
    return AuditRow(
        when=stamp.astimezone(zone),
        kind=kind,
        event=event,
        person=label or subject,
        subject=subject,
        reason=_text(entry.get("reason")),
        detail=_detail(entry),
        label=label,
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str) if isinstance(value, dict | list) else str(value)


def _detail(entry: dict[str, Any]) -> str:
    parts = []
    for key, value in entry.items():
        if key in _COLUMN_FIELDS or key in _HIDDEN_FIELDS or value is None:
            continue
        text = _text(value)
        if len(text) > MAX_DETAIL_VALUE:
            text = text[: MAX_DETAIL_VALUE - 1] + "…"
        parts.append(f"{key}={text}")
    return "; ".join(parts)


# -- reading the log backwards ----------------------------------------------------------------------


def _lines_backwards(fh: BinaryIO, end: int) -> Iterator[bytes]:
    """The complete lines of `fh[:end]`, last first; the bytes after the last newline are a line still being written."""
    pos, tail, dropping = end, b"", True  # dropping: the line being assembled is skipped (partial, or too long)
    while pos > 0:
        start = max(0, pos - BLOCK_SIZE)
        fh.seek(start)
        chunk = fh.read(pos - start)
        if len(chunk) != pos - start:  # the file shrank under us: it was replaced, not appended to
            return
        pos = start
        parts = (chunk + tail).split(b"\n")
        if len(parts) == 1:
            tail = b"" if dropping else parts[0]
        else:
            if dropping:
                parts[-1], dropping = b"", False
            tail = parts[0]
            for line in reversed(parts[1:]):
                if line.strip():
                    yield line
        if len(tail) > MAX_LINE:
            tail, dropping = b"", True
    if tail.strip() and not dropping:
        yield tail


def _ts_bounds(day: date) -> tuple[bytes, bytes] | None:
    """UTC timestamps (as AuditLog writes them) surely bracketing `day` in any zone (offsets stay within ±14 h)."""
    try:
        low, high = day - timedelta(days=1), day + timedelta(days=2)
    except OverflowError:  # the first or last days datetime knows: no pre-check, the full parse decides
        return None
    return f"{low.isoformat()}T00:00:00".encode(), f"{high.isoformat()}T00:00:00".encode()


def _surely_other_day(line: bytes, bounds: tuple[bytes, bytes]) -> bool:
    """Cheap pre-check of the day filter on the raw line; anything unusual is left to the full parse."""
    if not line.startswith(_TS_PREFIX):
        return False
    ts = line[len(_TS_PREFIX) : len(_TS_PREFIX) + _TS_LEN]
    if len(ts) != _TS_LEN or not ts.endswith(b"Z"):
        return False
    return not bounds[0] <= ts[:19] < bounds[1]


def iter_log(path: Path, filter: AuditFilter, zone: tzinfo) -> Generator[AuditRow, None, None]:
    """Every entry of the log at `path` that passes `filter`, newest first; a missing file is an empty log.

    Reads up to the size the file had when the first row was asked for (entries appended later wait for the
    next request). Malformed and partial lines are skipped.
    """
    try:
        fh = open(path, "rb")  # closed by the `with` below
    except FileNotFoundError:
        return
    with fh:
        end = fh.seek(0, io.SEEK_END)
        bounds = _ts_bounds(filter.day) if filter.day is not None else None
        for line in _lines_backwards(fh, end):
            if bounds is not None and _surely_other_day(line, bounds):
                continue
            try:
                entry = json.loads(line)
            except ValueError:  # JSON or UTF-8 errors: a torn or foreign line
                continue
            row = parse_entry(entry, zone)
            if row is not None and filter.matches(row):
                yield row


def read_log(path: Path, filter: AuditFilter, zone: tzinfo, limit: int = 200) -> tuple[list[AuditRow], bool]:
    """The newest `limit` matching rows, and whether more rows matched (the console says "more: narrow the filter")."""
    if limit < 1:
        raise AuditViewError(f"limit must be at least 1, not {limit}")
    rows: list[AuditRow] = []
    source = iter_log(path, filter, zone)
    try:
        for row in source:
            if len(rows) == limit:
                return rows, True
            rows.append(row)
    finally:
        source.close()  # closes the file now, not whenever the generator is collected
    return rows, False


# -- the filter dropdown -------------------------------------------------------------------------------


def event_choices(extra: Iterable[str] = ()) -> list[str]:
    """The values the event filter offers: the door events, the other entry kinds, then `extra` (e.g. the current filter)."""
    known = [str(e) for e in DoorEvent] + [str(k) for k in AuditKind if k is not AuditKind.EVENT]
    more = sorted({e for e in extra if e and e not in known})
    return known + more


# -- CSV export ----------------------------------------------------------------------------------------


def csv_safe(text: str) -> str:
    """`text` as a spreadsheet shows it literally: a leading apostrophe stops a formula (=, +, -, @, tab, CR)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def to_csv(rows: Iterable[AuditRow]) -> Iterator[str]:
    """The rows as CSV text (RFC 4180 quoting, CRLF), in chunks: a header first, then batches of rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_HEADER)
    count = 0
    for row in rows:
        cells = (row.event, row.person, row.subject, row.reason, row.detail)
        writer.writerow([row.when.isoformat(timespec="milliseconds"), *(csv_safe(c) for c in cells)])
        count += 1
        if count % CSV_ROWS_PER_CHUNK == 0:
            yield _drain(buffer)
    if buffer.tell():
        yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


# -- the door's time zone ------------------------------------------------------------------------------


class SystemZone(tzinfo):
    """The system's local time, offset looked up per instant (DST-correct, unlike a fixed `astimezone()` offset).

    Converting to it (`astimezone`) gives a datetime carrying the fixed offset in force at that instant.
    """

    def fromutc(self, dt: datetime) -> datetime:
        local = time.localtime(dt.replace(tzinfo=UTC).timestamp())
        offset = timedelta(seconds=local.tm_gmtoff)
        return (dt + offset).replace(tzinfo=timezone(offset, local.tm_zone))

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(seconds=self._local(dt).tm_gmtoff)

    def dst(self, dt: datetime | None) -> timedelta:
        local = self._local(dt)
        return timedelta(hours=1) if local.tm_isdst > 0 else timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return self._local(dt).tm_zone

    @staticmethod
    def _local(dt: datetime | None) -> time.struct_time:
        """The local time fields for wall time `dt` (now if None); an ambiguous hour resolves as the C library does."""
        if dt is None:
            return time.localtime()
        fields = (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, 0, 0, -1)  # not dt.timetuple(): it calls dst()
        try:
            return time.localtime(time.mktime(fields))
        except (OverflowError, ValueError):  # outside what the C library handles
            return time.localtime()

    def __repr__(self) -> str:
        return "SystemZone()"


def door_zone(name: str) -> tzinfo:
    """The door's time zone from `[access] timezone` ("" = the system's); an unknown name is an AccessRuleError."""
    zone = door_timezone(name)
    return zone if zone is not None else SystemZone()


__all__ = [
    "CSV_HEADER",
    "AuditFilter",
    "AuditKind",
    "AuditRow",
    "AuditViewError",
    "SystemZone",
    "csv_safe",
    "door_zone",
    "event_choices",
    "iter_log",
    "parse_entry",
    "read_log",
    "to_csv",
]
