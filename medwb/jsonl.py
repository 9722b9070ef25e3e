"""JSON lines, the project's one format for records, answers and results: written whole
(temp file, then rename), appended durably (flushed and synced per call), read back
strictly (records a run wrote itself) or tolerantly (files a crash may have cut).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from medwb.paths import write_text_atomic


def dumps(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)


def write(path, rows: Iterable[dict]) -> Path:
    """The whole file under a temp name, then renamed: never half-written."""
    path = Path(path)
    write_text_atomic(path, dumps(rows))
    return path


def read(path) -> list[dict]:
    """Every line of a file this project wrote whole; a bad line is an error."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_tolerant(path) -> list[dict]:
    """The objects of a file appended to over time: a line cut off by a crash (or anything
    not a JSON object) is skipped, and a missing file is empty."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def end_with_newline(path) -> None:
    """A crash can leave a half line: start the next append on a line of its own. The newline
    is appended (O_APPEND), not written at the end this process saw: another process may
    have appended a line since (at worst that leaves a blank line, which readers skip)."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
        if last != b"\n":
            with open(path, "ab") as f:
                f.write(b"\n")


def append(path, rows: Iterable[dict]) -> None:
    """Rows appended, flushed and synced: kept the moment they exist (a crash can cut only
    the line being written, which ``read_tolerant`` skips)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    end_with_newline(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(dumps(rows))
        f.flush()
        os.fsync(f.fileno())
