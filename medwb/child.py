"""Results from child processes (other environment, fresh interpreter): through a file.

Libraries print what they like on stdout (progress bars, NNCF tables, warnings), and
whether they print *after* our result depends on versions and on whether a cache was warm:
reading "the last stdout line" once failed only on a fresh machine. So the parent gives the
child a result path in ``$MEDWB_RESULT_FILE``; the child writes its JSON there atomically
(``write_result``) and stdout/stderr are left to the libraries. A child that exits 0
without writing a result is an error, never an empty answer.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import write_json_atomic

RESULT_ENV = "MEDWB_RESULT_FILE"


class ChildError(MedwbError):
    """A child process failed, timed out or wrote no result; ``reason`` says which."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"`{what}` {reason}")
        self.reason = reason


def write_result(obj) -> None:
    """In the child: hand ``obj`` (JSON-serialisable) to the parent. Run by hand (no
    result path given), it is printed instead."""
    path = os.environ.get(RESULT_ENV)
    if path and Path(path).exists() and not Path(path).is_file():
        # A device or pipe (/dev/null, a FIFO): written into, never replaced by a rename, which
        # as root would swap the machine's /dev/null for a regular file.
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False))
    elif path:
        write_json_atomic(Path(path), obj)
    else:
        print(json.dumps(obj, ensure_ascii=False))


def run(command: list[str], timeout: float = 300, cwd=None, env: dict | None = None,
        what: str | None = None):
    """Run ``command`` and return the JSON object it wrote with ``write_result``.

    Raises ChildError naming ``what`` (default: the command) with the last line of its
    stderr when it fails, times out, or writes nothing.
    """
    what = what or " ".join(map(str, command[:4]))
    with tempfile.TemporaryDirectory(prefix="medwb-child-") as tmp:
        result = Path(tmp) / "result.json"
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                  env={**(env if env is not None else os.environ), RESULT_ENV: str(result)},
                                  stdin=subprocess.DEVNULL, errors="replace")
        except subprocess.TimeoutExpired:
            raise ChildError(what, f"timed out after {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise ChildError(what, f"failed: {last_line(proc.stderr or proc.stdout, proc.returncode)}")
        if not result.exists():
            raise ChildError(what, "exited without writing its result "
                                   f"(last output: {last_line(proc.stderr or proc.stdout, 0)})")
        return json.loads(result.read_text(encoding="utf-8"))


def last_line(text: str, returncode: int) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {returncode}, no output"
