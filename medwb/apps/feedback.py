"""The doctors' feedback store: every generation and every action, in one SQLite file.

One row per round (generation started for a record: a doctor pressed generate, or opened or
saved a discharge record), per output (one model's answer in that round), per action on an
answer (view, back-fill, copy, like, dislike, error report, regenerate) and per record event
(open, save, save_unchanged: what the usage rate counts). An output keeps the workflow's
checks of it: the grounding flags (kind and position; the flagged words only with
``store_text``) and, for discharge records, the status of each section.
Rows are only ever added (an output row is updated once, when its model finishes), and
every write is its own committed transaction, so no action is lost when a kernel dies or
two rounds overlap. WAL mode lets a reporting notebook read while the app writes. An output
names the process writing it (``writer``); one left ``running`` by a process that no longer
exists (a killed kernel, a restarted server) is marked ``interrupted`` when the store is
next opened, while a live process's (several apps may share one store) are left alone.

Privacy: patient text is not stored by default. A round keeps a keyed hash of its inputs
(HMAC-SHA256 with a random key kept in the database, so identical inputs are recognisable
within one database but the hash cannot be checked against guessed text elsewhere), and an
output keeps a hash of its text. ``store_text=True`` (an explicit opt-in, e.g. for a
workshop on synthetic cases) also keeps the raw inputs and outputs. Free text that a doctor
types into an error report is kept: it is the report.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
from pathlib import Path

from medwb.clock import now
from medwb.errors import MedwbError

SCHEMA_VERSION = 4
ACTIONS = ("view", "backfill", "copy", "like", "dislike", "report_error", "regenerate")
# "interrupted": the process writing the output ended before the model finished.
OUTPUT_STATUSES = ("running", "ok", "error", "timeout", "cancelled", "interrupted")
# Record events: a doctor opened a record, saved it changed (a new round) or unchanged (none).
EVENTS = ("open", "save", "save_unchanged")
ORIGINS = ("ui", "scripted", "simulated")
ERROR_CATEGORIES = ("事实错误 factual error", "遗漏 omission", "诊断不当 wrong diagnosis",
                    "格式问题 format", "其他 other")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow        TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    origin          TEXT NOT NULL,
    parent_round_id INTEGER REFERENCES rounds(round_id),
    case_ref        TEXT,
    inputs_hash     TEXT NOT NULL,
    inputs_json     TEXT,
    template_hash   TEXT NOT NULL,
    max_new_tokens  INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    machine_load    TEXT,
    record_ref      TEXT);
CREATE TABLE IF NOT EXISTS outputs (
    output_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id          INTEGER NOT NULL REFERENCES rounds(round_id),
    slot              INTEGER NOT NULL,
    model_label       TEXT NOT NULL,
    backend           TEXT NOT NULL,
    precision         TEXT NOT NULL,
    model_path        TEXT,
    model_fingerprint TEXT,
    status            TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in OUTPUT_STATUSES)})),
    error             TEXT,
    truncation_note   TEXT,
    prompt_tokens     INTEGER,
    new_tokens        INTEGER,
    ttft_ms           REAL,
    total_ms          REAL,
    output_hash       TEXT,
    output_text       TEXT,
    started_at        TEXT NOT NULL,
    finished_at       TEXT,
    flags_json        TEXT,
    sections_json     TEXT,
    writer            TEXT);
CREATE TABLE IF NOT EXISTS actions (
    action_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    round_id   INTEGER NOT NULL REFERENCES rounds(round_id),
    output_id  INTEGER REFERENCES outputs(output_id),
    action     TEXT NOT NULL CHECK (action IN ({", ".join(repr(a) for a in ACTIONS)})),
    category   TEXT,
    detail     TEXT,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    event_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow   TEXT NOT NULL,
    session_id TEXT NOT NULL,
    origin     TEXT NOT NULL,
    record_ref TEXT,
    event      TEXT NOT NULL CHECK (event IN ({", ".join(repr(e) for e in EVENTS)})),
    round_id   INTEGER REFERENCES rounds(round_id),
    created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outputs_by_round ON outputs(round_id);
CREATE INDEX IF NOT EXISTS actions_by_output ON actions(output_id);
"""


TABLES = ("rounds", "outputs", "actions", "events")


def _outputs_rebuild() -> list[str]:
    """Version 4 widens the outputs' status CHECK, which SQLite cannot alter: the table is
    copied into one with the new definition, in the migration's transaction (SQLite's
    documented procedure; foreign keys are switched on only after it)."""
    import re
    create = re.search(r"CREATE TABLE IF NOT EXISTS outputs \(.*?\);", SCHEMA, re.S).group(0)
    columns = [line.split()[0] for line in create.splitlines()[1:]]
    old = ", ".join(c for c in columns if c != "writer")
    return [create.replace("IF NOT EXISTS outputs", "outputs_v4"),
            f"INSERT INTO outputs_v4 ({old}) SELECT {old} FROM outputs",
            "DROP TABLE outputs", "ALTER TABLE outputs_v4 RENAME TO outputs",
            "CREATE INDEX IF NOT EXISTS outputs_by_round ON outputs(round_id)"]


# Older stores are upgraded in place, in one transaction: columns and tables added (the
# events table of version 3 comes from the schema's CREATE IF NOT EXISTS), the outputs
# table copied once for version 4; no row is lost.
MIGRATIONS = {1: ["ALTER TABLE rounds ADD COLUMN machine_load TEXT"],
              2: ["ALTER TABLE rounds ADD COLUMN record_ref TEXT",
                  "ALTER TABLE outputs ADD COLUMN flags_json TEXT",
                  "ALTER TABLE outputs ADD COLUMN sections_json TEXT"],
              3: _outputs_rebuild()}


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with
    the boot id it tells a live writer from a later process that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def writer_id() -> str:
    """This process, as ``host:boot:pid:start``."""
    import socket
    return f"{socket.gethostname()}:{_boot_id()}:{os.getpid()}:{_process_start(os.getpid())}"


def writer_alive(writer: str | None) -> bool:
    """False when the process that wrote ``writer`` certainly no longer exists: same host and
    it has rebooted since, or no process with that pid and start time. A writer on another
    host (a store on a shared disk) is taken to be alive: it cannot be checked from here."""
    import socket
    if not writer:
        return False  # written before version 4, which named no writer: not running now
    host, boot, pid, start = writer.rsplit(":", 3)
    if host != socket.gethostname():
        return True
    return boot == _boot_id() and pid.isdigit() and _process_start(int(pid)) == start


def now_ms() -> str:
    return now("milliseconds")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeedbackStore:
    """Thread-safe: the app's button callbacks and its worker reader threads share it.

    ``clock``: a function returning the ISO time to stamp rows with (default: now, UTC);
    ``medwb feedback simulate`` gives one that walks through a simulated month.
    """

    def __init__(self, path, store_text: bool = False, parameter: str = "feedback_db", clock=None):
        self.path = self._check_path(path, parameter)
        self.store_text = bool(store_text)
        self.now = clock or now_ms
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # FULL: a committed action survives a power cut too (NORMAL may lose the last ones in WAL).
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._conn:
                # One transaction, taken before reading the version: a second process opening
                # the same store waits, then finds it set up or upgraded; a crash leaves it as it was.
                self._conn.execute("BEGIN IMMEDIATE")
                new = self._conn.execute("SELECT name FROM sqlite_master WHERE name = 'rounds'").fetchone() is None
                for statement in filter(str.strip, SCHEMA.split(";")):  # executescript would commit first
                    self._conn.execute(statement)
                if new:
                    self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                version = int(self._meta("schema_version"))
                for old in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS.get(old, []):
                        self._conn.execute(statement)
                    self._conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(old + 1),))
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('hash_key', ?)", (secrets.token_hex(32),))
            self._conn.execute("PRAGMA foreign_keys=ON")  # after the migrations (version 4 copies a table)
        except sqlite3.DatabaseError as e:
            raise MedwbError(f"{parameter} '{self.path}' cannot be opened as a writable feedback database ({e}); "
                             "choose a path in a folder you can write to (e.g. runs/feedback.sqlite), for a new "
                             "file or an existing MedWB feedback database") from e
        if mode.lower() != "wal":
            raise MedwbError(f"{parameter} '{self.path}': SQLite refused WAL mode (journal mode {mode!r}); "
                             "put the database on a local disk, not a network share")
        version = int(self._meta("schema_version"))
        if version != SCHEMA_VERSION:
            raise MedwbError(f"{parameter} '{self.path}' has schema version {version}, this MedWB writes "
                             f"{SCHEMA_VERSION}; use a new file")
        self._key = bytes.fromhex(self._meta("hash_key"))
        self.writer = writer_id()
        self.interrupted = self._mark_interrupted()

    def _mark_interrupted(self) -> int:
        """Outputs left ``running`` by a process that has ended -> ``interrupted``; how many."""
        writers = [w for (w,) in self._conn.execute("SELECT DISTINCT writer FROM outputs WHERE status = 'running'")]
        n = 0
        for w in (w for w in writers if not writer_alive(w)):
            with self._lock, self._conn:
                n += self._conn.execute(
                    "UPDATE outputs SET status = 'interrupted', finished_at = ?, error = ? "
                    "WHERE status = 'running' AND writer IS ?",
                    (self.now(), "the app's process ended before this answer finished (killed or restarted)",
                     w)).rowcount
        return n

    @staticmethod
    def _check_path(path, parameter: str) -> Path:
        if not path or not str(path).strip():
            raise MedwbError(f"{parameter} is empty: give a file path such as runs/feedback.sqlite")
        p = Path(path).expanduser()
        if p.is_dir():
            raise MedwbError(f"{parameter} '{p}' is a folder: give a file path inside it, e.g. {p / 'feedback.sqlite'}")
        folder = p.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MedwbError(f"{parameter} '{p}': its folder cannot be created ({e.strerror}); "
                             "choose a path in a folder you can write to") from e
        # SQLite needs to create the -wal and -shm files next to the database, so the folder
        # itself must be writable, not only the file.
        if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.R_OK | os.W_OK)):
            raise MedwbError(f"{parameter} '{p}' is not writable (SQLite also writes -wal/-shm files in "
                             f"'{folder}'); choose a path in a folder you can write to, e.g. runs/feedback.sqlite")
        return p

    def _meta(self, key: str) -> str:
        return self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def _write(self, sql: str, args: tuple) -> int:
        with self._lock, self._conn:  # one committed transaction per write
            return self._conn.execute(sql, args).lastrowid

    def inputs_hash(self, inputs: dict) -> str:
        canonical = json.dumps(inputs, ensure_ascii=False, sort_keys=True)
        return hmac.new(self._key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ writes
    def new_round(self, workflow: str, session_id: str, inputs: dict, template: str, max_new_tokens: int,
                  parent_round_id: int | None = None, case_ref: str | None = None, origin: str = "ui",
                  machine_load: dict | None = None, record_ref: str | None = None) -> int:
        """``origin``: 'ui' (a person at the widgets) or 'scripted' (a notebook driving the app,
        e.g. the headless demo), so a report can leave scripted feedback out. ``machine_load``
        (medwb.sysinfo.machine_load) tells later whether slow answers came from a busy server.
        ``record_ref``: the record the doctor has open (a bundled id, or one given to a typed
        record), which links the round to the record's open event for the usage rate."""
        if origin not in ORIGINS:
            raise ValueError(f"origin {origin!r}: use one of {', '.join(ORIGINS)}")
        return self._write(
            "INSERT INTO rounds (workflow, session_id, origin, parent_round_id, case_ref, inputs_hash, inputs_json,"
            " template_hash, max_new_tokens, created_at, machine_load, record_ref)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (workflow, session_id, origin, parent_round_id, case_ref, self.inputs_hash(inputs),
             json.dumps(inputs, ensure_ascii=False) if self.store_text else None, text_hash(template),
             int(max_new_tokens), self.now(), json.dumps(machine_load) if machine_load else None, record_ref))

    def new_output(self, round_id: int, slot: int, model: dict) -> int:
        """``model``: label, backend, precision, model_path, fingerprint (the model's identity)."""
        return self._write(
            "INSERT INTO outputs (round_id, slot, model_label, backend, precision, model_path, model_fingerprint,"
            " status, started_at, writer) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
            (round_id, slot, model["label"], model["backend"], model["precision"], model.get("model_path"),
             model.get("fingerprint"), self.now(), self.writer))

    def finish_output(self, output_id: int, status: str, text: str = "", error: str | None = None,
                      truncation_note: str | None = None, prompt_tokens: int | None = None,
                      new_tokens: int | None = None, ttft_ms: float | None = None,
                      total_ms: float | None = None, flags: list[dict] | None = None,
                      sections: dict | None = None) -> None:
        """``flags``: grounding flags (kind, start, end, text); their words are patient text,
        kept only with ``store_text``. ``sections``: section -> complete / empty / missing."""
        if status not in OUTPUT_STATUSES[1:]:
            raise ValueError(f"status {status!r}: use one of {', '.join(OUTPUT_STATUSES[1:])}")
        if flags is not None:
            keep = ("kind", "start", "end", "text") if self.store_text else ("kind", "start", "end")
            flags = json.dumps([{k: f[k] for k in keep} for f in flags], ensure_ascii=False)
        self._write(
            "UPDATE outputs SET status = ?, error = ?, truncation_note = ?, prompt_tokens = ?, new_tokens = ?,"
            " ttft_ms = ?, total_ms = ?, output_hash = ?, output_text = ?, finished_at = ?, flags_json = ?,"
            " sections_json = ? WHERE output_id = ?",
            (status, error, truncation_note, prompt_tokens, new_tokens, ttft_ms, total_ms,
             text_hash(text) if text else None, text if (self.store_text and text) else None, self.now(),
             flags, json.dumps(sections, ensure_ascii=False) if sections else None, output_id))

    def action(self, action: str, round_id: int, output_id: int | None = None,
               category: str | None = None, detail: str | None = None) -> int:
        if action not in ACTIONS:
            raise MedwbError(f"action {action!r} is unknown; use one of {', '.join(ACTIONS)}")
        return self._write("INSERT INTO actions (round_id, output_id, action, category, detail, created_at)"
                           " VALUES (?, ?, ?, ?, ?, ?)", (round_id, output_id, action, category, detail, self.now()))

    def event(self, workflow: str, session_id: str, origin: str, record_ref: str | None, event: str,
              round_id: int | None = None) -> int:
        """A record event: ``open`` (a doctor opened a record), ``save`` (saved it changed: a
        new round follows) or ``save_unchanged`` (saved as it was: nothing is generated)."""
        if event not in EVENTS:
            raise MedwbError(f"event {event!r} is unknown; use one of {', '.join(EVENTS)}")
        return self._write("INSERT INTO events (workflow, session_id, origin, record_ref, event, round_id, created_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)", (workflow, session_id, origin, record_ref, event,
                                                              round_id, self.now()))

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ reads
    def rows(self, table: str) -> list[dict]:
        if table not in TABLES:
            raise ValueError(f"table {table!r}: use one of {', '.join(TABLES)}")
        with self._lock:
            cur = self._conn.execute(f"SELECT * FROM {table} ORDER BY 1")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def summary(path, workflow: str | None = None, origin: str | None = None):
    """Per model: outputs, failures, like rate, adoption (back-fill) rate, copies, error
    reports and latency (``medwb.quality.usage``), from the database file (read-only; works
    while the app writes). ``workflow`` and ``origin`` ('ui' or 'scripted') select rounds;
    None: all."""
    import pandas as pd

    from medwb.quality import usage
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    where = [(c, v) for c, v in (("r.workflow", workflow), ("r.origin", origin)) if v]
    sql = "SELECT o.* FROM outputs o JOIN rounds r USING (round_id)"
    if where:
        sql += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
    try:
        with sqlite3.connect(uri, uri=True) as conn:
            outputs = pd.read_sql_query(sql, conn, params=tuple(v for _, v in where))
            actions = pd.read_sql_query("SELECT * FROM actions WHERE output_id IS NOT NULL ORDER BY action_id", conn)
    except (sqlite3.Error, pd.errors.DatabaseError) as e:  # not SQLite, or SQLite without our tables
        reason = str(e.__cause__ or e)
        raise MedwbError(f"database '{path}' is not a MedWB feedback database ({reason}): give the feedback_db "
                         "of notebooks 04/05 (by default feedback.sqlite in their run folder)") from None
    if outputs.empty:
        return pd.DataFrame()
    return usage.per_model(outputs, actions)
