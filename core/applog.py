"""App logs: one line per output line, stamped "2026-12-07T09:30:00.123Z stdout TEXT" with when the platform read
it (UTC) and its stream ("platform" for lines the platform writes itself). Logs written before this format have bare
lines. The builders write them (their output pumps and log followers), the platform's logs route and deploy errors
read them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from pathlib import Path

APP_LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (stdout|stderr|platform) (.*)", re.DOTALL)
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
MAX_LOG_LINE = 64 * 1024
SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SINCE_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
# Container log threads and the event loop append to the same files; rotation must not race a write.
_app_log_lock = threading.Lock()


@dataclasses.dataclass
class LogLine:
    ts: str | None  # None: a line of an older log, without a time
    stream: str | None
    line: str

    def to_dict(self) -> dict[str, str | None]:
        return {"ts": self.ts, "stream": self.stream, "line": self.line}


def log_timestamp(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def parse_log_line(raw: str) -> LogLine:
    m = APP_LOG_LINE.fullmatch(raw)
    return LogLine(m[1], m[2], m[3]) if m else LogLine(None, None, raw)


def rotated_log(path: Path) -> Path:
    return path.with_name(path.name + ".1")


class AppLog:
    """An app log kept open by its writers (an instance's output pumps or log followers), so a line costs one write
    and no open or stat. Writers of one path share one handle: rotation by one must not leave another appending to
    the rotated file. :meth:`open` counts them, :meth:`close` lets go."""

    _open: dict[str, "AppLog"] = {}

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path, self.max_bytes, self.users = path, max_bytes, 0
        self._f = None
        self._size = 0

    @classmethod
    def open(cls, path: Path | str, max_bytes: int | None = None) -> "AppLog":
        key = os.fspath(path)
        with _app_log_lock:
            log = cls._open.get(key)
            if log is None:
                log = cls._open[key] = cls(Path(path), max_bytes or DEFAULT_LOG_MAX_BYTES)
            log.users += 1
            return log

    def close(self) -> None:
        with _app_log_lock:
            self.users -= 1
            if self.users <= 0:
                self._close_file()
                if self._open.get(os.fspath(self.path)) is self:
                    del self._open[os.fspath(self.path)]

    def _close_file(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            f.close()

    def write(self, stream: str, lines: list[bytes] | list[str]) -> None:
        """Append ``lines`` (without newlines), all stamped now. A line that would take the file past ``max_bytes``
        goes to a new file, the full one becoming ``app.log.1`` (replacing the previous one): a version keeps at
        most twice the limit."""
        if not lines:
            return
        encoded = _encode(stream, lines)
        with _app_log_lock:
            try:
                self._write(encoded)
            except OSError:
                self._close_file()  # reopened on the next write (the directory may come back, or not)
                raise

    def _write(self, encoded: list[bytes]) -> None:
        if self._f is None:
            self._f = open(self.path, "ab", buffering=0)
            self._size = os.fstat(self._f.fileno()).st_size
        chunk: list[bytes] = []
        for data in encoded:
            if self._size and self._size + len(data) > self.max_bytes:
                if chunk:
                    self._f.write(b"".join(chunk))
                    chunk = []
                self._close_file()
                os.replace(self.path, rotated_log(self.path))
                self._f, self._size = open(self.path, "ab", buffering=0), 0
            chunk.append(data)
            self._size += len(data)
        self._f.write(b"".join(chunk))


def _encode(stream: str, lines: list[bytes] | list[str]) -> list[bytes]:
    stamp = log_timestamp()
    return [f"{stamp} {stream} {part.rstrip(chr(13))}\n".encode("utf-8", "replace")
            for line in lines
            for part in (line.decode("utf-8", "replace") if isinstance(line, bytes) else line).split("\n")]


def append_app_log(path: Path | str, stream: str, lines: list[bytes] | list[str], *,
                   max_bytes: int | None = None) -> None:
    """One write to an app log (see :meth:`AppLog.write`), through its writers' handle when it has some."""
    if not lines:
        return
    log = AppLog.open(path, max_bytes)
    try:
        log.write(stream, lines)
    finally:
        log.close()


class LineSplitter:
    """Cuts a byte stream into lines, and lines longer than MAX_LOG_LINE into pieces."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        while len(self.pending) > MAX_LOG_LINE:
            lines.append(self.pending[:MAX_LOG_LINE])
            self.pending = self.pending[MAX_LOG_LINE:]
        return [line[i:i + MAX_LOG_LINE] for line in lines for i in range(0, max(len(line), 1), MAX_LOG_LINE)]

    def flush(self) -> list[bytes]:
        rest, self.pending = self.pending, b""
        return [rest] if rest else []


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as 30s, 10m, 2h, 90d or 1h30m; None when ``text`` is not one."""
    text = text.strip()
    if not _SINCE_DURATION.fullmatch(text):
        return None
    return sum(float(n) * SINCE_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text))


def parse_since(value: str, now: float | None = None) -> str:
    """``since`` of the logs route as a log timestamp: a duration ago (30s, 10m, 2h, 1d, 1h30m) or an ISO 8601
    time (UTC when it has no offset). ValueError when it is neither."""
    import datetime

    text = value.strip()
    seconds = parse_duration(text)
    if seconds is not None:
        return log_timestamp((time.time() if now is None else now) - seconds)
    when = datetime.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return log_timestamp(when.timestamp())


def log_line_matches(entry: LogLine, since: str | None, grep: re.Pattern | None) -> bool:
    if since is not None and (entry.ts is None or entry.ts < since):
        return False
    return grep is None or grep.search(entry.line) is not None


def _lines_backwards(f, end: int, block: int = 64 * 1024):
    """The lines of the open binary file ``f`` before offset ``end``, last first."""
    pos, rest, first = end, b"", True
    while pos > 0:
        n = min(block, pos)
        pos -= n
        f.seek(pos)
        lines = (f.read(n) + rest).split(b"\n")
        if first and lines[-1] == b"":
            lines.pop()  # the file's final newline
        first = False
        rest = lines.pop(0) if pos > 0 else b""
        for line in reversed(lines):
            yield line.decode("utf-8", "replace")
    if rest:
        yield rest.decode("utf-8", "replace")


def read_app_log(path: Path, *, tail: int | None = 100, since: str | None = None, grep: re.Pattern | None = None,
                 current=None, end: int | None = None) -> list[LogLine]:
    """The last ``tail`` lines (None: all) of an app log and its rotated file that match (see log_line_matches),
    oldest first. ``current``/``end``: an open handle on ``path`` to read up to ``end`` (where a follow goes on)."""
    if tail is not None and tail <= 0:
        return []
    found: list[LogLine] = []
    for file in (path, rotated_log(path)):
        f = current if file == path and current is not None else None
        try:
            if f is None:
                f = open(file, "rb")
                limit = os.fstat(f.fileno()).st_size
            else:
                limit = end if end is not None else os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            continue
        try:
            for raw in _lines_backwards(f, limit):
                entry = parse_log_line(raw)
                if since is not None and entry.ts is not None and entry.ts < since:
                    return found[::-1]  # lines are in time order: nothing older can match
                if log_line_matches(entry, since, grep):
                    found.append(entry)
                    if tail is not None and len(found) >= tail:
                        return found[::-1]
        finally:
            if f is not current:
                f.close()
    return found[::-1]


def tail_file(path: Path, lines: int = 40) -> str:
    """The last lines of a build log or an app log (its rotated file too), without the app log's time and stream."""
    return "\n".join(e.line for e in read_app_log(path, tail=lines))
