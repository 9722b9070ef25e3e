"""The differential-diagnosis workflow (鉴别诊断) without widgets: the form's fields, bundled
cases, fitting a prompt into a model's context, and back-filling an answer into the record.

The prompt template is ``medwb.tasks.prompts.DIAGNOSIS_PROMPT`` (a hospital edits it there, or
passes its own template with the same placeholders to the app).
"""
from __future__ import annotations

import html
import string

from medwb.apps import fitting
from medwb.apps.fitting import CUT_MARK
from medwb.quality import grounding
from medwb.tasks import corpus, prompts
from medwb.errors import MedwbError

# Form fields in display order: (placeholder, label). The 病历特点 are the last four.
FIELDS = (("sex", "性别"), ("age", "年龄"), ("chief_complaint", "主诉"), ("present_history", "现病史"),
          ("past_history", "既往史"), ("physical_exam", "体格检查"), ("auxiliary_exams", "辅助检查"))
LABELS = dict(FIELDS)
# Cut first when a case does not fit the context: the long free-text parts. The chief
# complaint, sex and age are never cut.
TRUNCATABLE = ("auxiliary_exams", "present_history", "physical_exam", "past_history")
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


def render(fields: dict, template: str = prompts.DIAGNOSIS_PROMPT, chat=None) -> str:
    """The prompt as the model reads it: ``chat`` (medwb.models.chat.renderer: the model's own
    chat template) around the filled template; None: the demo model's chat format."""
    text = template.format(**fields)
    return chat(text) if chat else prompts.user_turn(text)


def fit_prompt(fields: dict, encode, context: int, max_new_tokens: int,
               template: str = prompts.DIAGNOSIS_PROMPT, chat=None) -> tuple[str, list[int], str | None]:
    """The chat prompt, its token ids, and a warning when fields had to be cut.

    A prompt plus ``max_new_tokens`` must fit the model's context. When it does not, the
    longest truncatable field loses its end (marked 已截断) until it fits: the instruction and
    the chief complaint are kept whole, and the warning names every field that was cut.
    ``encode`` is the model's own tokenizer (models in one comparison may differ).
    """
    prompt, ids, _, n_first, cut = fitting.fit(
        fields, encode, context, max_new_tokens, lambda f: render(f, template, chat), [fitting.cut_longest(TRUNCATABLE)],
        f"even with {', '.join(LABELS[k] for k in TRUNCATABLE)} cut; shorten the chief complaint "
        "or lower max_new_tokens")
    if len(ids) == n_first:
        return prompt, ids, None
    cuts = [f"{LABELS[k]} {len(fields[k])}→{len(cut[k]) - len(CUT_MARK)} 字" for k in TRUNCATABLE
            if cut[k].endswith(CUT_MARK) and cut[k] != fields[k]]
    warning = (f"输入过长，已截断 (input truncated): {', '.join(cuts)}; the case was {n_first} tokens, the model's "
               f"context is {context} with {max_new_tokens} kept for the answer")
    return prompt, ids, warning


def basis_flags(answer: str, fields: dict) -> list[dict]:
    """Grounding flags on the answer's 诊断依据: every value, date and drug it states that
    the case's fields do not (offsets index the whole answer)."""
    body = grounding.section(answer, prompts.BASIS_HEADING, (prompts.DIFFERENTIAL_HEADING,))
    if not body:
        return []
    offset = answer.find(f"{prompts.BASIS_HEADING}：") + len(prompts.BASIS_HEADING) + 1
    source = prompts.DIAGNOSIS_PROMPT.format(**fields)  # as the model read it: "45岁" grounds "45岁"
    return [{**f.as_dict(), "start": f.start + offset, "end": f.end + offset}
            for f in grounding.flags(body, source)]


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
