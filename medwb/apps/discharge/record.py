"""The discharge-record workflow (出院记录) without widgets: the inpatient record a draft is
written from, fitting a long record into a model's context, the draft's five sections, and
grounding flags on what the draft states that the record does not.

The source record is one text with headed parts, as a doctor pastes it or as a bundled
held-out record is shown: the admission record (一般情况, 主诉, 现病史, 既往史, 体格检查,
辅助检查, 入院诊断), the daily course notes (病程记录, one ``第N日，...`` note per line), the
last ward round (出院前查房) and the discharge orders (出院医嘱). The prompt is
``medwb.tasks.prompts.DISCHARGE_PROMPT`` filled from those parts.
"""
from __future__ import annotations

import re

from medwb.apps import fitting
from medwb.apps.fitting import CUT_MARK
from medwb.errors import MedwbError
from medwb.quality import grounding
from medwb.tasks import workflow
from medwb.tasks import corpus, prompts

# Record parts in order: (field, heading). 一般情况 carries sex and age.
PARTS = (("general", "一般情况"), ("chief_complaint", "主诉"), ("present_history", "现病史"),
         ("past_history", "既往史"), ("physical_exam", "体格检查"), ("auxiliary_exams", "辅助检查"),
         ("disease", "入院诊断"), ("course_notes", "病程记录"), ("discharge_condition", "出院前查房"),
         ("orders_brief", "出院医嘱"))
HEADINGS = dict(PARTS)
# The admission part a draft cannot be written without.
REQUIRED = ("chief_complaint", "disease")
# Admission free text cut at its end (longest first) once the course notes are down to the
# days that matter; the chief complaint, admission diagnosis, last ward round and discharge
# orders are never cut.
TRUNCATABLE = ("present_history", "auxiliary_exams", "physical_exam", "past_history")
SECTIONS = prompts.DISCHARGE_SECTIONS
# Course notes that record a procedure (kept whole when a long record is shortened).
PROCEDURE = re.compile(r"术|穿刺|置管|插管|引流|介入|支架|造影|镜|切除|缝合|复位|固定|透析|输血|病理")
_NOTE = re.compile(r"第\s*\d+\s*[日天]\s*[，,:：]")
FIT_METHODS = ("key_days", "truncate")


# ---------------------------------------------------------------- bundled records

def bundled_records() -> dict[str, dict]:
    """record_id -> case fields: the held-out discharge records, then the long (multi-day)
    renderings of the varied set (a fortnight or more of course notes)."""
    out = {r["case"]["case_id"]: r["case"] for r in corpus.load_records("discharge")}
    for r in corpus.load_records("discharge", heldout_set="varied"):
        if "long" in r["case"]["style"]:
            out[r["case"]["case_id"]] = r["case"]
    return out


def record_choices() -> list[tuple[str, str]]:
    """(label, record_id) for a picker: id, patient, chief complaint, days of notes."""
    return [(f"{rid} · {c['sex']} {c['age']}岁 · {c['chief_complaint']} · {len(split_notes(c['course_notes']))} 条病程",
             rid) for rid, c in bundled_records().items()]


def record_text(record_id: str, parameter: str = "record_id") -> str:
    records = bundled_records()
    if record_id not in records:
        raise MedwbError(f"{parameter} {record_id!r} is not a bundled record; use one of "
                         f"{', '.join(list(records)[:4])}, ... ({len(records)} held-out discharge records)")
    c = records[record_id]
    return render_record({"general": f"患者，{c['sex']}，{c['age']}岁。", **{k: str(c[k]) for k, _ in PARTS[1:]}})


def render_record(parts: dict) -> str:
    """The record as the editor shows it: one heading per part, one course note per line."""
    lines = []
    for key, heading in PARTS:
        body = parts.get(key, "")
        if key == "course_notes":
            lines.append(f"{heading}：\n" + "\n".join(split_notes(body)))
        else:
            lines.append(f"{heading}：{body}")
    return "\n".join(lines) + "\n"


def split_notes(course: str) -> list[str]:
    """The course notes, one dated note each (text before the first date is a note too)."""
    course = (course or "").strip()
    starts = [m.start() for m in _NOTE.finditer(course)]
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return [n for n in (course[a:b].strip() for a, b in zip(starts, starts[1:] + [len(course)])) if n]


# ---------------------------------------------------------------- reading a record

def parse_record(text: str) -> dict:
    """The record's parts by heading (a heading at a line start, then a colon); a part
    absent from the text is "". Unknown lines before the first heading are ignored."""
    names = "|".join(re.escape(h) for _, h in PARTS)
    marks = list(re.finditer(rf"(?m)^[ \t]*【?({names})】?[ \t]*[：:]", text or ""))
    by_heading = {h: k for k, h in PARTS}
    parts = {k: "" for k, _ in PARTS}
    for m, nxt in zip(marks, marks[1:] + [None]):
        body = text[m.end():nxt.start() if nxt else len(text)].strip()
        key = by_heading[m.group(1)]
        parts[key] = "".join(line.strip() for line in body.splitlines()) if key == "course_notes" else body
    return parts


def check_record(text: str) -> dict:
    """The prompt's fields from a record's text, or a message saying what is missing."""
    if not (text or "").strip():
        raise MedwbError("the record is empty: pick a bundled record, or paste an inpatient record (入院记录 with "
                         "主诉 and 入院诊断, 病程记录, 出院前查房, 出院医嘱) and press 打开 open")
    parts = parse_record(text)
    missing = [HEADINGS[k] for k in REQUIRED if not parts[k].strip()]
    if missing:
        raise MedwbError(f"the record has no admission part ({' and '.join(missing)} not found): put the admission "
                         "record first, each part on its own line as 主诉：… and 入院诊断：…, then the course notes")
    general = parts.pop("general")
    sex = re.search(r"[男女]", general)
    age = re.search(r"(\d{1,3})\s*岁", general)
    fields = {"sex": sex.group(0) if sex else "未知", "age": age.group(1) if age else "未知"}
    fields.update({k: v.strip() or "无" for k, v in parts.items()})
    return fields


def source_text(fields: dict) -> str:
    """Everything the record states, as the model read it (so "35岁" grounds "35岁")."""
    return prompts.DISCHARGE_PROMPT.format(**fields)


def render(fields: dict, template: str = prompts.DISCHARGE_PROMPT, chat=None) -> str:
    """The prompt as the model reads it: ``chat`` (medwb.models.chat.renderer: the model's own
    chat template) around the filled template; None: the demo model's chat format."""
    text = template.format(**fields)
    return chat(text) if chat else prompts.user_turn(text)


# ---------------------------------------------------------------- fitting a long record

def note_kind(note: str, earlier: list[str]) -> str:
    """key (first/last day handled by the caller): a procedure; finding: states a value,
    dose or date; routine: neither, or the same text as an earlier note."""
    body = _NOTE.sub("", note, count=1)
    if any(_NOTE.sub("", e, count=1) == body for e in earlier):
        return "routine"
    if PROCEDURE.search(body):
        return "key"
    if grounding.findings(body) or grounding.DATE.search(body):
        return "finding"
    return "routine"


def _drop_note(fields: dict, kinds: tuple[str, ...], note: str):
    """A step dropping one middle course note of the given kinds (earliest first)."""
    notes = split_notes(fields["course_notes"])
    if len(notes) <= 2:
        return None
    for i in range(1, len(notes) - 1):  # the first and the last day are kept
        if note_kind(notes[i], notes[:i]) in kinds:
            return {**fields, "course_notes": "".join(notes[:i] + notes[i + 1:])}, note
    return None


def fit_steps(method: str = "key_days") -> list:
    """key_days: drop routine notes, then notes without a procedure (earliest first), then
    cut the admission free text, and only then drop procedure notes; the first and last
    day, 主诉, 入院诊断, 出院前查房 and 出院医嘱 stay whole. truncate (the baseline): the
    longest part loses its end."""
    if method == "truncate":
        return [fitting.cut_longest(TRUNCATABLE + ("course_notes",), "truncate")]
    if method != "key_days":
        raise MedwbError(f"fit method {method!r}: use one of {', '.join(FIT_METHODS)}")
    return [lambda f, n, b: _drop_note(f, ("routine",), "routine"),
            lambda f, n, b: _drop_note(f, ("finding",), "finding"),
            fitting.cut_longest(TRUNCATABLE, "admission"),
            lambda f, n, b: _drop_note(f, ("key",), "procedure")]


def _day(note: str) -> str | None:
    """"第5日" of a note that starts with its date."""
    m = _NOTE.match(note)
    return m.group(0).rstrip("，,:：") if m else None


def fit_prompt(fields: dict, encode, context: int, max_new_tokens: int,
               template: str = prompts.DISCHARGE_PROMPT, method: str = "key_days",
               chat=None) -> tuple[str, list[int], str | None]:
    """The chat prompt, its token ids, and a note saying what was shortened (None when the
    record fits as it is)."""
    prompt, ids, notes, n_first, fitted = fitting.fit(
        fields, encode, context, max_new_tokens, lambda f: render(f, template, chat), fit_steps(method),
        "even with only the first and the last day left of the course notes and the admission history cut; "
        "主诉, 入院诊断, 出院前查房 and 出院医嘱 are never cut: lower max_new_tokens or shorten those parts")
    if len(ids) == n_first:
        return prompt, ids, None
    before, after = split_notes(fields["course_notes"]), split_notes(fitted["course_notes"])
    said = []
    if len(after) < len(before):
        kept = {_day(n) for n in after}
        days = [d for d in map(_day, before) if d and d not in kept]
        what = ("常规查房病程" if "finding" not in notes else "常规查房及无操作的病程") \
            + ("，含操作记录 (procedure notes too)" if "procedure" in notes else "")
        said.append(f"省略{what} {len(before) - len(after)} 条 ({'、'.join(days[:8])}{'…' if len(days) > 8 else ''})")
    cuts = [f"{HEADINGS[k]} {len(fields[k])}→{len(fitted[k]) - len(CUT_MARK)} 字"
            for k in TRUNCATABLE + ("course_notes",) if fitted[k].endswith(CUT_MARK) and fitted[k] != fields[k]]
    if cuts:
        said.append("截断 " + ", ".join(cuts))
    warning = (f"病历过长，已精简 (record shortened to fit): {'; '.join(said)}; the record was {n_first} tokens, the "
               f"model's context is {context} with {max_new_tokens} kept for the draft")
    return prompt, ids, warning


# ---------------------------------------------------------------- checking a draft

def analyse(draft: str, fields: dict) -> dict:
    """The draft's five sections (complete / empty / missing) and its grounding flags:
    values, dates and drugs not in the record, and discharge diagnoses the record does not
    name (checked in 出院诊断 against the knowledge table's diagnosis names)."""
    sections = workflow.parse_sections(draft)
    diagnosis_text = sections.get("出院诊断") or ""
    flags = grounding.flags(draft, source_text(fields), corpus.diagnosis_vocabulary(),
                            section_text=diagnosis_text or None)
    return {"sections": workflow.section_status(sections), "flags": [f.as_dict() for f in flags],
            "parsed": sections}


# ---------------------------------------------------------------- the discharge-record editor

def backfill(editor: dict, parsed: dict, section: str | None = None) -> list[str]:
    """Copy the draft's sections into the editor's five fields: all that the draft has
    (``section`` None) or the one named. Returns the sections written."""
    if section is not None and section not in SECTIONS:
        raise MedwbError(f"section {section!r}: use one of {', '.join(SECTIONS)}")
    wanted = [section] if section else list(SECTIONS)
    written = [s for s in wanted if parsed.get(s)]
    if not written:
        raise MedwbError(f"this draft has no {section or 'section'} text to back-fill"
                         + ("; back-fill another model's or write it" if section else ""))
    for s in written:
        editor[s] = parsed[s]
    return written
