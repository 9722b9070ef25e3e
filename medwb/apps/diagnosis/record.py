"""The differential-diagnosis workflow (鉴别诊断) without widgets: the form's fields, bundled
cases, fitting a prompt into a model's context, and back-filling an answer into the record.

The prompt template is ``medwb.tasks.prompts.DIAGNOSIS_PROMPT`` (a hospital edits it there, or
passes its own template with the same placeholders to the app).
"""
from __future__ import annotations

import html
import math
import string

from medwb.tasks import corpus, prompts
from medwb.errors import MedwbError

# Form fields in display order: (placeholder, label). The 病历特点 are the last four.
FIELDS = (("sex", "性别"), ("age", "年龄"), ("chief_complaint", "主诉"), ("present_history", "现病史"),
          ("past_history", "既往史"), ("physical_exam", "体格检查"), ("auxiliary_exams", "辅助检查"))
LABELS = dict(FIELDS)
# Cut first when a case does not fit the context: the long free-text parts. The chief
# complaint, sex and age are never cut.
TRUNCATABLE = ("auxiliary_exams", "present_history", "physical_exam", "past_history")
CUT_MARK = "…(已截断)"
# Where the chosen answer goes in the course record (一键回填).
INSERT_MARK = "【待回填：鉴别诊断】"


def bundled_cases() -> dict[str, dict]:
    """case_id -> form fields, for the bundled held-out diagnosis cases."""
    return {r["case"]["case_id"]: {k: str(r["case"][k]) for k, _ in FIELDS}
            for r in corpus.load_records("diagnosis")}


def case_fields(case_id: str, parameter: str = "case_id") -> dict:
    cases = bundled_cases()
    if case_id not in cases:
        raise MedwbError(f"{parameter} {case_id!r} is not a bundled case; use one of "
                         f"{', '.join(list(cases)[:5])}, ... ({len(cases)} in data/heldout/diagnosis.jsonl)")
    return dict(cases[case_id])


def case_choices() -> list[tuple[str, str]]:
    """(label, case_id) for a picker: id, sex, age and chief complaint (not the diagnosis)."""
    return [(f"{cid} · {f['sex']} {f['age']}岁 · {f['chief_complaint']}", cid) for cid, f in bundled_cases().items()]


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(template: str, parameter: str = "template") -> str:
    unknown = template_fields(template) - set(LABELS)
    if unknown:
        raise MedwbError(f"{parameter}: unknown placeholder(s) {', '.join(sorted(unknown))}; "
                         f"a diagnosis template may use {', '.join(LABELS)}")
    return template


def check_inputs(fields: dict) -> dict:
    """Stripped fields; the chief complaint is required, other empty fields read 无."""
    clean = {k: str(fields.get(k, "")).strip() for k, _ in FIELDS}
    if not clean["chief_complaint"]:
        raise MedwbError("主诉 (chief complaint) is empty: enter the main symptom and its duration, "
                         "e.g. 胸痛3天, then generate again")
    return {k: v or "无" for k, v in clean.items()}


def render(fields: dict, template: str = prompts.DIAGNOSIS_PROMPT) -> str:
    return prompts.render_chat([{"role": "user", "content": template.format(**fields)}])


def fit_prompt(fields: dict, encode, context: int, max_new_tokens: int,
               template: str = prompts.DIAGNOSIS_PROMPT) -> tuple[str, list[int], str | None]:
    """The chat prompt, its token ids, and a warning when fields had to be cut.

    A prompt plus ``max_new_tokens`` must fit the model's context. When it does not, the
    longest truncatable field loses its end (marked 已截断) until it fits: the instruction and
    the chief complaint are kept whole, and the warning names every field that was cut.
    ``encode`` is the model's own tokenizer (models in one comparison may differ).
    """
    budget = context - max_new_tokens
    if budget < 16:
        raise MedwbError(f"max_new_tokens {max_new_tokens} leaves no room for the case in the model's "
                         f"context of {context} tokens; lower max_new_tokens")
    fields = dict(fields)
    original = {k: len(v) for k, v in fields.items()}
    prompt = render(fields, template)
    ids = encode(prompt)
    n_first = n = len(ids)
    while n > budget:
        candidates = [k for k in TRUNCATABLE if len(fields[k]) > len(CUT_MARK)]
        if not candidates:
            raise MedwbError(f"the case does not fit the model's context of {context} tokens even with "
                             f"{', '.join(LABELS[k] for k in TRUNCATABLE)} cut; shorten the chief complaint "
                             "or lower max_new_tokens")
        key = max(candidates, key=lambda k: len(fields[k]))
        text = fields[key].removesuffix(CUT_MARK)
        # Characters per token of this text, to cut roughly the excess at once (then re-check).
        excess_chars = math.ceil((n - budget) * max(1.0, len(text) / max(1, n)) * 1.1) + 1
        keep = max(0, len(text) - excess_chars)
        fields[key] = text[:keep] + CUT_MARK
        prompt = render(fields, template)
        ids = encode(prompt)
        n = len(ids)
    if n == n_first:
        return prompt, ids, None
    cuts = [f"{LABELS[k]} {original[k]}→{len(fields[k]) - len(CUT_MARK)} 字" for k in TRUNCATABLE
            if fields[k].endswith(CUT_MARK) and original[k] != len(fields[k])]
    warning = (f"输入过长，已截断 (input truncated): {', '.join(cuts)}; the case was {n_first} tokens, the model's "
               f"context is {context} with {max_new_tokens} kept for the answer")
    return prompt, ids, warning


# ---------------------------------------------------------------- the record editor

def course_record(fields: dict) -> str:
    """A first course record (首次病程记录) with the insertion point for the chosen answer."""
    return ("首次病程记录\n"
            f"病例特点：患者{fields['sex']}，{fields['age']}岁，因“{fields['chief_complaint']}”入院。\n"
            f"现病史：{fields['present_history']}\n体格检查：{fields['physical_exam']}\n"
            f"辅助检查：{fields['auxiliary_exams']}\n"
            f"初步诊断及鉴别诊断：\n{INSERT_MARK}\n"
            "诊疗计划：完善相关检查，对症支持治疗，密切观察病情变化。\n")


def backfill(record: str, answer: str, previous: tuple[int, int, str] | None = None) -> tuple[str, tuple[int, int]]:
    """Insert ``answer`` into the record; returns the new record and the inserted span.

    Where: the insertion mark if it is there; else over the previous back-fill
    ``(start, end, text)`` if the doctor has not edited it (choosing another model replaces
    it); else at the end.
    """
    if INSERT_MARK in record:
        start = record.index(INSERT_MARK)
        end = start + len(INSERT_MARK)
    elif previous and record[previous[0]:previous[1]] == previous[2]:
        start, end = previous[0], previous[1]
    else:
        start = end = len(record)
        answer = ("\n" if record and not record.endswith("\n") else "") + answer
    return record[:start] + answer + record[end:], (start, start + len(answer))


def highlight(record: str, span: tuple[int, int] | None) -> str:
    """HTML of the record with the back-filled part marked (the editor's insertion view)."""
    if not span:
        return f"<pre style='white-space:pre-wrap'>{html.escape(record)}</pre>"
    a, b = span
    return ("<pre style='white-space:pre-wrap'>" + html.escape(record[:a])
            + "<mark title='一键回填'>" + html.escape(record[a:b]) + "</mark>" + html.escape(record[b:]) + "</pre>")
