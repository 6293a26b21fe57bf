"""A run folder's files: run.json (what was run) and an append-only ledger (results.jsonl: one finished inversion
a line; scores.jsonl: one score a line).

Every write is durable before it counts: a ledger line is flushed and fsync'd, other files are written
to a temporary name and renamed into place, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from invmm.errors import InvMMInputError
from invmm.records import InversionRecord

RUN_FILE = "run.json"
LEDGER_FILE = "results.jsonl"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


class Ledger:
    """An append-only ledger of records (InversionRecords in results.jsonl by default; evaluate's ScoreRecords in
    scores.jsonl), each line durable before it counts."""

    def __init__(self, run_dir: Path, name: str = LEDGER_FILE, record=InversionRecord):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / name
        self.record = record

    @classmethod
    def create(cls, run_dir: Path, run_info: dict) -> Ledger:
        """Start a new InvMM run; refuse a folder that already holds one, so nothing written is overwritten."""
        open_folder(run_dir, run_info, ledger=LEDGER_FILE, resume=False, what="a run")
        return cls(run_dir)

    def append(self, record) -> None:
        append_line(self.path, record.to_json())

    def extend(self, records) -> None:
        """Several records, durable together (one fsync: a batch of a cheap scorer is thousands of lines a minute)."""
        append_lines(self.path, [r.to_json() for r in records])

    def read(self) -> list:
        """All complete records; a torn last line (a crash mid-write) is ignored."""
        return [self.record.from_json(d) for d in iter_lines(self.path)]


def read_run_info(run_dir: Path, kind: str = "run") -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise InvMMInputError(f"{run_dir}: no {RUN_FILE}; not a {kind} folder this tool wrote")
    return json.loads(path.read_text(encoding="utf-8"))


def open_folder(run_dir: Path, info: dict, *, ledger: str, resume: bool, what: str, hint: str = "",
                differences: Callable[[dict, dict], list[str]] | None = None,
                update: Callable[[dict, dict], dict] | None = None) -> tuple[dict, int]:
    """The one way a run folder (run.json + its append-only `ledger` file) is opened: created with `info`; or,
    with `resume`, an existing one reopened if `differences(old, info)` finds nothing that changed, and its
    run.json rewritten as `update(old, info)`. Returns the run.json in force and the bytes cut from a torn last
    ledger line. Without resume an existing folder is never touched; a changed one is refused and says what
    changed (`what`: "a run", "scores"; `hint`: what to do)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InvMMInputError(f"output folder {run_dir} is a file; choose another --out")
    if not (resume and (run_dir / RUN_FILE).exists()):
        if (run_dir / RUN_FILE).exists() or (run_dir / ledger).exists():
            raise InvMMInputError(
                f"output folder {run_dir} already holds {what} ({RUN_FILE}/{ledger})"
                + ("; it has no run.json, so this tool did not write it. Give another --out" if resume else
                   "; choose another --out so its results are kept"))
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / RUN_FILE, info)
        (run_dir / ledger).touch()
        return info, 0
    old = read_run_info(run_dir)
    changed = differences(old, info)
    if changed:
        raise InvMMInputError(f"{run_dir} holds {what} made differently: {'; '.join(changed)}. {hint}")
    torn = repair_tail(run_dir / ledger)
    info = update(old, info)
    atomic_write_json(run_dir / RUN_FILE, info)
    return info, torn


def repair_tail(path: Path) -> int:
    """Cut an unterminated last line (a crash mid-write) so the next append starts a fresh line; returns the
    number of bytes removed. Complete lines are never touched."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return len(data) - keep


def append_line(path: Path, obj: dict) -> None:
    """One JSON record, durable before this returns."""
    append_lines(path, [obj])


def append_lines(path: Path, objs: list[dict]) -> None:
    """JSON records, one a line, durable before this returns; a crash mid-write tears at most the last line."""
    if not objs:
        return
    text = "".join(json.dumps(obj, sort_keys=True, allow_nan=False) + "\n" for obj in objs)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path) -> list[dict]:
    """The complete JSON records of a ledger file; an unterminated, unparsable last line (a crash mid-write) is
    ignored, a bad line anywhere else is an error."""
    return list(iter_lines(path))


def iter_lines(path: Path):
    """read_lines one record at a time: a ledger of 100,000 lines is never held as text, lines and records at
    once (readers that keep records build them from this)."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        n = 0
        for line in f:
            n += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n") and not f.read(1):  # only the unterminated tail can be torn
                    return
                raise InvMMInputError(f"{path}: line {n} is not valid JSON; the ledger was edited or corrupted "
                                      "(restore it or start a new run folder)") from None
            yield record
