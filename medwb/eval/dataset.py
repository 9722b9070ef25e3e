"""Load PromptCBLUE-format JSON lines: one record per line with ``input``, ``target`` (the
gold reply, or a model's reply in a prediction file), ``answer_choices`` (list of strings
or null), ``task_type``, ``task_dataset`` and ``sample_id`` (doc §0.1 of
``docs/evaluation/promptcblue-official-scoring.md``). Other keys (MedWB's ``case``, say)
are kept in ``Sample.extra``.

Each bad line is reported as ``"{path}:{line}: {reason}"`` (1-based). With
``strict=True`` (the default) any bad line raises EvalDataError; with ``strict=False`` bad
lines are skipped and listed in ``Dataset.problems``. Blank lines are skipped silently.
Dispatch is on ``task_dataset``, as in the official parser (it never uses ``task_type``);
names outside the scoring table are mapped with ``task_map`` (see ``scoring.task_spec``).

Beyond the field checks, a record is refused where the official scorer would fail on it:
a task that reads its labels from ``answer_choices`` (ner, spo, normalization, attr) with
null choices, and a label task whose gold target parses to an empty label.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medwb.errors import MedwbError
from medwb.eval import scoring

REQUIRED = ("input", "target", "answer_choices", "task_type", "task_dataset", "sample_id")
STRING_FIELDS = ("input", "target", "task_type", "task_dataset", "sample_id")
SHOWN_PROBLEMS = 3


class EvalDataError(MedwbError):
    """The evaluation data cannot be used; ``problems`` lists every bad line (empty for a
    file-level problem such as a missing file)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass(frozen=True)
class Sample:
    sample_id: str
    task_dataset: str
    task_type: str
    input: str
    target: str
    answer_choices: tuple[str, ...] | None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Dataset:
    """The loaded samples in file order, the bad lines skipped (strict=False), the source."""
    path: Path
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)
    task_map: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def tasks(self) -> list[str]:
        """Task names in first-seen order."""
        return list(dict.fromkeys(s.task_dataset for s in self.samples))

    def by_task(self) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {}
        for s in self.samples:
            out.setdefault(s.task_dataset, []).append(s)
        return out

    def spec(self, task_dataset: str) -> scoring.TaskSpec:
        return scoring.task_spec(task_dataset, self.task_map)


def load(path, strict: bool = True, task_map: dict[str, str] | None = None) -> Dataset:
    """Read ``path`` (JSON lines). Raises EvalDataError for a missing or empty file, an
    invalid ``task_map``, any bad line when ``strict``, or no usable line at all."""
    path = Path(path)
    task_map = dict(task_map or {})
    _check_task_map(task_map)
    lines = _read_lines(path)
    checker = _LineChecker(path, task_map)
    samples: list[Sample] = []
    for line_no, line in enumerate(lines, 1):
        if line.strip():
            samples += checker.check(line_no, line)
    problems = checker.problems
    if checker.records == 0:
        raise EvalDataError(f"evaluation data {path} has no records: give a JSON-lines file with one "
                            f"PromptCBLUE record per line")
    if problems and (strict or not samples):
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + ("; ..." if len(problems) > SHOWN_PROBLEMS else "")
        hint = "pass strict=False to load the rest" if strict else "no good line is left: fix the file"
        raise EvalDataError(f"{len(problems)} bad line(s) in {path}: {shown} ({hint})", problems)
    return Dataset(path=path, samples=samples, problems=problems, task_map=task_map)


def _check_task_map(task_map: dict[str, str]) -> None:
    for name in task_map:
        try:
            scoring.task_spec(name, task_map)
        except MedwbError as e:
            raise EvalDataError(str(e)) from None


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise EvalDataError(f"evaluation data {path} does not exist: pass the path of a "
                            f"PromptCBLUE-format JSON-lines file")
    if path.is_dir():
        raise EvalDataError(f"evaluation data {path} is a directory: pass a JSON-lines file in it")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EvalDataError(f"evaluation data {path} is not UTF-8 text ({e.reason} at byte {e.start}): "
                            f"save it as UTF-8") from None
    # "\n" only: str.splitlines would also split on U+2028 etc., which JSON strings may hold raw.
    return text.split("\n")


class _LineChecker:
    """Checks one line at a time; remembers sample ids, task specs and the problems."""

    def __init__(self, path: Path, task_map: dict[str, str]):
        self.path, self.task_map = path, task_map
        self.problems: list[str] = []
        self.records = 0
        self.first_line: dict[str, int] = {}
        self.specs: dict[str, scoring.TaskSpec | str] = {}  # task -> spec, or the reason it is refused

    def check(self, line_no: int, line: str) -> list[Sample]:
        """[sample] for a good line; [] (and a problem recorded) for a bad one."""
        self.records += 1
        record, reason = _decode(line)
        if reason is None:
            reason = _field_problem(record) or self._task_problem(record) or self._duplicate(record, line_no)
        if reason is not None:
            self.problems.append(f"{self.path}:{line_no}: {reason}")
            return []
        self.first_line[record["sample_id"]] = line_no
        choices = record["answer_choices"]
        return [Sample(sample_id=record["sample_id"], task_dataset=record["task_dataset"],
                       task_type=record["task_type"], input=record["input"], target=record["target"],
                       answer_choices=tuple(choices) if choices is not None else None,
                       extra={k: v for k, v in record.items() if k not in REQUIRED})]

    def _spec(self, task: str) -> scoring.TaskSpec | str:
        if task not in self.specs:
            try:
                self.specs[task] = scoring.task_spec(task, self.task_map)
            except MedwbError as e:
                self.specs[task] = str(e)
        return self.specs[task]

    def _task_problem(self, record: dict) -> str | None:
        spec = self._spec(record["task_dataset"])
        if isinstance(spec, str):
            return spec
        if spec.family in scoring.NEEDS_CHOICES and record["answer_choices"] is None:
            return (f"answer_choices is null but task {spec.name!r} ({spec.family}) reads its labels "
                    f"from it: give the list of labels")
        if spec.family in scoring.LABEL_FAMILIES:
            label, _ = scoring.parse(spec, record["target"], record["answer_choices"])
            if label == "":
                return ("target gives an empty gold label (the official scorer rejects it): "
                        "fix the target")
        return None

    def _duplicate(self, record: dict, line_no: int) -> str | None:
        first = self.first_line.get(record["sample_id"])
        if first is None:
            return None
        return f"sample_id {record['sample_id']!r} repeats line {first}: give each record its own id"


def _decode(line: str) -> tuple[dict | None, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at column {e.colno})"
    if not isinstance(record, dict):
        return None, f"not a JSON object (got {type(record).__name__}): each line must be one record"
    return record, None


def _field_problem(record: dict) -> str | None:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)} (a record needs {', '.join(REQUIRED)})"
    not_strings = [k for k in STRING_FIELDS if not isinstance(record[k], str)]
    if not_strings:
        got = ", ".join(f"{k}={type(record[k]).__name__}" for k in not_strings)
        return f"field(s) {', '.join(not_strings)} must be strings (got {got})"
    choices = record["answer_choices"]
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        return "answer_choices must be a list of strings or null"
    return None
