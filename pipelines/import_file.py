"""`python -m pipelines import FILE`: bulk-load posts or tickets from CSV/JSONL via ingest.

Every row goes through the same validation, PII redaction, limits and idempotent storage as
`POST /v1/tickets`; a bad row is reported and skipped, never fatal. Batches are committed one at
a time and a checkpoint after each lets an interrupted import resume where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from sqlmodel import Session
from tqdm import tqdm

from app.core.body import RawBody, clean_json, reject_constant
from app.core.config import Settings
from app.core.db import make_engine
from app.core.errors import AppError
from app.ingest import service as ingest_service
from app.ingest.schemas import PostCreate, TicketCreate
from app.ingest.sources import SourceRegistry

log = logging.getLogger("pipelines.import")

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
SCHEMAS: dict[str, type[BaseModel]] = {"posts": PostCreate, "tickets": TicketCreate}
# The field that names where a row came from, per kind (`--platform` / `--source`).
SOURCE_FIELD = {"posts": "platform", "tickets": "source"}
REPORTED_REJECTIONS = 100
CHECKPOINT_VERSION = 1
# Fields whose value may be personal data: a rejection reason never repeats their input.
_PRIVATE_FIELDS = {"author", "text", "body", "title", "subject", "metadata"}
# What prepare() calls a ticket field, and what the same field is called in a post.
_POST_NAMES = {"body": "text", "subject": "title", "source": "platform", "external_id": "id"}
_LINE_COUNT_MAX_BYTES = 4 << 30


class ImportUsageError(ValueError):
    """The import cannot start: missing file, unknown format or kind, or a bad column mapping."""


class ImportInterrupted(Exception):
    """The import stopped before the end; its checkpoint is kept so a rerun resumes."""

    def __init__(self, *, line: int, checkpoint: Path) -> None:
        super().__init__(
            f"interrupted; lines up to {line} are stored, checkpoint {checkpoint}: "
            "run the same command again to resume"
        )
        self.line = line
        self.checkpoint = checkpoint


@dataclass(slots=True)
class _Record:
    """One data row of the file: its first and last file line, its bytes, its values."""

    line: int
    end_line: int
    raw: bytes
    values: dict[str, Any] | None = None
    error: str | None = None


@dataclass(slots=True)
class _State:
    """What a checkpoint keeps: the last committed line and the counts up to it."""

    line: int = 0
    rows: int = 0
    imported: int = 0
    updated: int = 0
    duplicates: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The state as checkpoint JSON."""
        return {
            "line": self.line,
            "counts": {
                "rows": self.rows,
                "imported": self.imported,
                "updated": self.updated,
                "duplicates": self.duplicates,
                "rejected": len(self.rejections),
            },
            "rejections": self.rejections,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        """The state stored by `to_json`."""
        counts = data["counts"]
        return cls(
            line=int(data["line"]),
            rows=int(counts["rows"]),
            imported=int(counts["imported"]),
            updated=int(counts["updated"]),
            duplicates=int(counts["duplicates"]),
            rejections=[
                {"line": int(r["line"]), "reason": str(r["reason"])} for r in data["rejections"]
            ],
        )


# --- reading -------------------------------------------------------------------------------


class _LineFeed:
    """Hands csv.reader one line at a time and keeps the bytes it read, for the delivery record."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.lines = 0
        self.buffer: list[bytes] = []

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        raw = self.fh.readline()
        if not raw:
            raise StopIteration
        self.lines += 1
        if self.lines == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        self.buffer.append(raw)
        # Undecodable bytes survive as surrogates so the row, not the file, is rejected.
        return raw.decode("utf-8", "surrogateescape")

    def take(self) -> bytes:
        """The bytes read since the last call."""
        data = b"".join(self.buffer)
        self.buffer.clear()
        return data


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _csv_records(fh: IO[bytes], header_out: list[bytes]) -> Iterator[_Record | list[str]]:
    """First the header (a list of names), then one record per CSV row; blank lines skipped."""
    feed = _LineFeed(fh)
    reader = csv.reader(feed)
    try:
        header = next(reader)
    except StopIteration:
        return
    header_out.append(feed.take())
    yield [h.strip() for h in header]
    while True:
        start = feed.lines + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield _Record(start, feed.lines, feed.take(), error=f"unreadable CSV row: {exc}")
            continue
        raw = feed.take()
        if not cells:
            continue
        if len(cells) != len(header):
            yield _Record(
                start,
                feed.lines,
                raw,
                error=f"expected {len(header)} columns as in the header, found {len(cells)}",
            )
            continue
        if not all(_valid_utf8(c) for c in cells):
            yield _Record(start, feed.lines, raw, error="the row is not valid UTF-8")
            continue
        values: dict[str, Any] = {}
        for name, cell in zip(header, cells, strict=True):
            name = name.strip()
            # Empty cells are absent; the first of two same-named columns wins.
            if cell != "" and name not in values:
                values[name] = clean_json(cell)
        yield _Record(start, feed.lines, raw, values=values)


def _jsonl_records(fh: IO[bytes]) -> Iterator[_Record]:
    """One record per non-blank line, each a JSON object."""
    for n, raw in enumerate(fh, start=1):
        if n == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _Record(n, n, raw, error=f"not valid UTF-8 (bad byte at column {exc.start + 1})")
            continue
        try:
            obj = json.loads(text.rstrip("\r\n"), parse_constant=reject_constant)
        except json.JSONDecodeError as exc:
            yield _Record(n, n, raw, error=f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except ValueError as exc:
            yield _Record(n, n, raw, error=f"not valid JSON: {exc}")
            continue
        except RecursionError:
            yield _Record(n, n, raw, error="not valid JSON: nested too deeply")
            continue
        if not isinstance(obj, dict):
            yield _Record(n, n, raw, error=f"expected a JSON object, found {type(obj).__name__}")
            continue
        # json.loads turns "\ud800" into a lone surrogate, which clean_json replaces.
        yield _Record(n, n, raw, values=clean_json(obj))


def _count_lines(path: Path, size: int) -> int | None:
    """Lines in the file for the progress bar; None when too big to count in passing."""
    if size > _LINE_COUNT_MAX_BYTES:
        return None
    count, last = 0, b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


# --- mapping rows to the service's shapes --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mapper:
    """Turns a row's columns into the input of PostCreate or TicketCreate."""

    kind: str
    mapping: dict[str, str]
    constants: dict[str, str]
    extra_as_metadata: bool
    dotted: bool

    @property
    def fields(self) -> list[str]:
        """The fields of the target schema."""
        return list(SCHEMAS[self.kind].model_fields)

    def column(self, name: str) -> str:
        """The column a field is read from."""
        return self.mapping.get(name, name)

    def build(self, values: dict[str, Any]) -> dict[str, Any]:
        """The schema's input for one row: mapped columns, then constants, then extras."""
        data: dict[str, Any] = {}
        used: set[str] = set()
        for name in self.fields:
            column = self.column(name)
            value, root = self._lookup(values, column)
            if root is not None:
                used.add(root)
            if value is None:
                value = self.constants.get(name)
            if value is not None:
                data[name] = value
        meta = data.get("metadata")
        if isinstance(meta, str):
            # A CSV cell can only carry metadata as a JSON object written out.
            try:
                parsed = json.loads(meta)
            except ValueError:
                parsed = meta
            data["metadata"] = meta = parsed
        if self.extra_as_metadata:
            # Whole top-level keys are used up by a dotted path, so `--map author=user.name`
            # never copies the raw `user` object (and its handle) into metadata.
            extras = {k: v for k, v in values.items() if k not in used and v is not None}
            if extras and meta is None:
                data["metadata"] = extras
            elif extras and isinstance(meta, dict):
                data["metadata"] = {**extras, **meta}
        return data

    def _lookup(self, values: dict[str, Any], column: str) -> tuple[Any, str | None]:
        if column in values:
            return values[column], column
        if not self.dotted or "." not in column:
            return None, None
        root, *rest = column.split(".")
        node: Any = values.get(root)
        for part in rest:
            node = node.get(part) if isinstance(node, dict) else None
        return node, root if root in values else None

    def validate(self, values: dict[str, Any]) -> TicketCreate:
        """The row as a TicketCreate; raises ValidationError naming the bad field."""
        data = self.build(values)
        if self.kind == "posts":
            return PostCreate.model_validate(data).to_ticket()
        return TicketCreate.model_validate(data)

    def validation_reason(self, exc: ValidationError) -> str:
        """A short message naming the field (and its column when renamed) of each error."""
        errors = exc.errors(include_url=False)
        parts = []
        for err in errors[:3]:
            loc = ".".join(str(p) for p in err.get("loc", ())) or "row"
            name = loc.split(".")[0]
            column = self.mapping.get(name)
            where = f"{loc} (column {column!r})" if column and column != name else loc
            message = f"{where}: {err.get('msg', 'invalid')}"
            value = err.get("input")
            if (
                err.get("type") != "missing"
                and name not in _PRIVATE_FIELDS
                and isinstance(value, str | int | float)
                and len(repr(value)) <= 40
            ):
                message += f" (got {value!r})"
            parts.append(message)
        if len(errors) > 3:
            parts.append(f"{len(errors) - 3} more")
        return "; ".join(parts)

    def app_reason(self, exc: AppError) -> str:
        """prepare()'s message for one item, in the field names of this kind."""
        message = exc.message.removeprefix("item: ")
        source_field = SOURCE_FIELD[self.kind]
        if exc.code == "unknown_source":
            # The full list of known sources is in the README; one line per row is enough here.
            head = message.split(". Use one of", 1)[0]
            head = head.replace("unknown source", f"unknown {source_field}")
            return f"{source_field}: {head} (add it to EXTRA_SOURCES to accept it)"
        if self.kind == "posts":
            first, _, rest = message.partition(" ")
            message = f"{_POST_NAMES.get(first, first)} {rest}".rstrip()
        return message


def parse_map(pairs: list[str] | None) -> dict[str, str]:
    """`field=column` pairs as a dict; raises ImportUsageError on a pair without `=`."""
    mapping: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, column = pair.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise ImportUsageError(f"--map {pair!r}: write it as FIELD=COLUMN, e.g. text=body")
        mapping[name] = column
    return mapping


def _mapper(
    kind: str, mapping: dict[str, str], constants: dict[str, str], extra: bool, fmt: str
) -> _Mapper:
    if kind not in SCHEMAS:
        raise ImportUsageError(f"unknown kind {kind!r}; use posts or tickets")
    fields = list(SCHEMAS[kind].model_fields)
    for what, names in (("--map", mapping), ("constant", constants)):
        for name in names:
            if name not in fields:
                raise ImportUsageError(
                    f"{what} {name!r}: {kind} have no such field; fields: {', '.join(fields)}"
                )
    return _Mapper(kind, dict(mapping), dict(constants), extra, dotted=fmt == "jsonl")


# --- checkpoints ---------------------------------------------------------------------------


def _identity(path: Path, kind: str, fmt: str) -> dict[str, Any]:
    st = path.stat()
    return {
        "file": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "kind": kind,
        "format": fmt,
    }


def default_checkpoint(path: Path, data_dir: Path) -> Path:
    """`<data_dir>/imports/<16 hex of sha256(absolute path, size, mtime)>.json`."""
    path = path.resolve()
    st = path.stat()
    key = f"{path}\x00{st.st_size}\x00{st.st_mtime_ns}".encode()
    return data_dir / "imports" / f"{hashlib.sha256(key).hexdigest()[:16]}.json"


def _load_checkpoint(checkpoint: Path, identity: dict[str, Any]) -> _State | None:
    if not checkpoint.exists():
        return None
    try:
        data = json.loads(checkpoint.read_text(encoding="utf-8"))
        if data.get("version") != CHECKPOINT_VERSION or data.get("identity") != identity:
            log.warning(
                "checkpoint is for another file, version or kind; starting from the top",
                extra={"stage": "import", "checkpoint": str(checkpoint)},
            )
            return None
        return _State.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        log.warning(
            "checkpoint unreadable; starting from the top",
            extra={"stage": "import", "checkpoint": str(checkpoint)},
        )
        return None


def _write_checkpoint(checkpoint: Path, identity: dict[str, Any], state: _State) -> None:
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    body = {"version": CHECKPOINT_VERSION, "identity": identity, **state.to_json()}
    tmp.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    # A crash mid-write leaves the previous checkpoint whole.
    os.replace(tmp, checkpoint)


# --- the import ----------------------------------------------------------------------------


def detect_format(path: Path, file_format: str | None) -> str:
    """csv or jsonl, from `file_format` or the file's extension."""
    if file_format:
        fmt = file_format.strip().lower().lstrip(".")
        fmt = "jsonl" if fmt == "ndjson" else fmt
        if fmt not in CONTENT_TYPES:
            raise ImportUsageError(f"unknown format {file_format!r}; use csv or jsonl")
        return fmt
    fmt_or_none = FORMATS.get(path.suffix.lower())
    if fmt_or_none is None:
        raise ImportUsageError(
            f"cannot tell the format of {path.name!r} from its extension; "
            "name it .csv/.jsonl/.ndjson or pass --format csv|jsonl"
        )
    return fmt_or_none


def run_import(
    path: Path,
    *,
    settings: Settings,
    kind: str = "posts",
    mapping: dict[str, str] | None = None,
    constants: dict[str, str] | None = None,
    batch_size: int = 500,
    checkpoint: Path | None = None,
    restart: bool = False,
    extra_as_metadata: bool = False,
    stop_after_batches: int | None = None,
    file_format: str | None = None,
    rejects: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import a CSV/JSONL file through the ingest service; returns the summary."""
    started = time.monotonic()
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ImportUsageError(f"no such file: {path}")
    fmt = detect_format(path, file_format)
    mapper = _mapper(kind, mapping or {}, constants or {}, extra_as_metadata, fmt)
    if batch_size < 1:
        raise ImportUsageError(f"--batch-size must be at least 1, not {batch_size}")
    identity = _identity(path, kind, fmt)
    checkpoint = checkpoint or default_checkpoint(path, settings.data_dir)
    state = None if restart else _load_checkpoint(checkpoint, identity)
    resumed_from = state.line if state else None
    state = state or _State()
    if resumed_from is not None:
        log.info(
            "import resuming",
            extra={"stage": "import", "file": str(path), "line": resumed_from},
        )

    engine = make_engine(settings.database_url)
    bar = tqdm(
        total=_count_lines(path, identity["size"]),
        unit="line",
        desc=f"import {path.name}",
        disable=None if progress else True,
    )
    try:
        _Importer(
            mapper=mapper,
            settings=settings,
            engine=engine,
            content_type=CONTENT_TYPES[fmt],
            batch_size=batch_size,
            checkpoint=checkpoint,
            identity=identity,
            state=state,
            stop_after_batches=stop_after_batches,
            bar=bar,
        ).run(path, fmt)
    except KeyboardInterrupt:
        committed = _load_checkpoint(checkpoint, identity)
        raise ImportInterrupted(
            line=committed.line if committed else 0, checkpoint=checkpoint
        ) from None
    finally:
        bar.close()
        engine.dispose()

    checkpoint.unlink(missing_ok=True)
    if rejects is not None:
        rejects.parent.mkdir(parents=True, exist_ok=True)
        with rejects.open("w", encoding="utf-8") as out:
            for rejection in state.rejections:
                out.write(json.dumps(rejection, ensure_ascii=False) + "\n")
    summary = {
        "file": str(path),
        "rows": state.rows,
        "imported": state.imported,
        "updated": state.updated,
        "duplicates": state.duplicates,
        "rejected": len(state.rejections),
        "rejections": state.rejections[:REPORTED_REJECTIONS],
        "resumed_from_line": resumed_from,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "import done",
        extra={"stage": "import", **{k: v for k, v in summary.items() if k != "rejections"}},
    )
    return summary


@dataclass
class _Importer:
    """One pass over the file: validate each row, store full batches, checkpoint after each."""

    mapper: _Mapper
    settings: Settings
    engine: Engine
    content_type: str
    batch_size: int
    checkpoint: Path
    identity: dict[str, Any]
    state: _State
    stop_after_batches: int | None
    bar: Any
    header: list[bytes] = field(default_factory=list)
    batch: list[tuple[ingest_service._Prepared, bytes]] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)
    batches: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        self.sources = SourceRegistry(self.settings.extra_sources)
        self.salt = self.settings.resolved_author_salt()

    def run(self, path: Path, fmt: str) -> None:
        """Read every record, skipping those a checkpoint says are stored already."""
        resume_line = self.state.line
        with path.open("rb") as fh:
            records: Iterator[_Record | list[str]]
            records = _csv_records(fh, self.header) if fmt == "csv" else _jsonl_records(fh)
            for record in records:
                if isinstance(record, list):
                    self._check_header(record)
                    continue
                self._advance(record.end_line)
                if record.end_line <= resume_line:
                    # Stored before; only its key matters, for duplicates later in the file.
                    checked = self._check(record)
                    if isinstance(checked, ingest_service._Prepared):
                        self.seen.add((checked.item.source, checked.item.external_id))
                    continue
                self._row(record)
        if self.batch:
            self._flush()

    def _check_header(self, header: list[str]) -> None:
        for name, column in self.mapper.mapping.items():
            if column not in header:
                raise ImportUsageError(
                    f"--map {name}={column}: no column {column!r} in the header "
                    f"({', '.join(header)})"
                )

    def _advance(self, line: int) -> None:
        if line > self.position:
            self.bar.update(line - self.position)
            self.position = line

    def _check(self, record: _Record) -> ingest_service._Prepared | str:
        """The prepared ticket, or why the row is rejected."""
        if record.values is None:
            return record.error or "unreadable row"
        try:
            item = self.mapper.validate(record.values)
            return ingest_service.prepare(
                [item], settings=self.settings, sources=self.sources, salt=self.salt
            )[0]
        except ValidationError as exc:
            return self.mapper.validation_reason(exc)
        except AppError as exc:
            return self.mapper.app_reason(exc)

    def _row(self, record: _Record) -> None:
        self.state.rows += 1
        checked = self._check(record)
        if isinstance(checked, str):
            self.state.rejections.append({"line": record.line, "reason": checked})
            return
        key = (checked.item.source, checked.item.external_id)
        if key in self.seen:
            self.state.duplicates += 1
            return
        self.seen.add(key)
        self.batch.append((checked, record.raw))
        if len(self.batch) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        # Indexes must be unique within one store() call; prepare() numbered each row 0.
        prepared = [dataclasses.replace(p, index=i) for i, (p, _) in enumerate(self.batch)]
        data = b"".join(self.header + [raw for _, raw in self.batch])
        with Session(self.engine, expire_on_commit=False) as session:
            results = ingest_service.store(
                session,
                prepared=prepared,
                raw=RawBody(data=data, content_type=self.content_type),
                kind="import",
            )
        for result in results:
            if result.result == "created":
                self.state.imported += 1
            elif result.result == "updated":
                self.state.updated += 1
            else:
                self.state.duplicates += 1
        self.state.line = self.position
        self.batch.clear()
        self.batches += 1
        _write_checkpoint(self.checkpoint, self.identity, self.state)
        log.debug(
            "import batch stored",
            extra={"stage": "import", "line": self.state.line, "items": len(results)},
        )
        if self.stop_after_batches is not None and self.batches >= self.stop_after_batches:
            raise ImportInterrupted(line=self.state.line, checkpoint=self.checkpoint)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`python -m pipelines import`: run it, print the JSON summary; 2 when it cannot start."""
    try:
        if args.database_url:
            settings = settings.model_copy(update={"database_url": args.database_url.strip()})
        constants = {}
        source = args.platform or args.source
        if source:
            constants[SOURCE_FIELD.get(args.kind, "source")] = source
        summary = run_import(
            Path(args.file),
            settings=settings,
            kind=args.kind,
            mapping=parse_map(args.map),
            constants=constants,
            batch_size=args.batch_size,
            checkpoint=Path(args.checkpoint) if args.checkpoint else None,
            restart=args.restart,
            extra_as_metadata=args.extra_as_metadata,
            file_format=args.format,
            rejects=Path(args.rejects) if args.rejects else None,
            progress=not args.quiet,
        )
    except ImportUsageError as exc:
        print(f"import: {exc}", file=sys.stderr)
        return 2
    except ImportInterrupted as exc:
        print(f"import: {exc}", file=sys.stderr)
        return 130
    print(json.dumps(summary, ensure_ascii=False))
    return 0
