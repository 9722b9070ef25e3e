"""The same case written in the layouts doctors use, for training the model to keep to its task.

The corpus writes every case in one of two layouts (the admission-record fields, or one
病历特点 paragraph). Doctors paste what their system gives them: headings in another order
and under other names, SOAP notes, bullet or numbered lists, telegraphic abbreviations, a
discharge record pasted whole after its task line. Put to the shipped model, such a case was
answered off-task a quarter (diagnosis) to more than half (discharge) of the time
(``medwb demo-model --doctor-style``). This module renders a training case in such layouts,
generated from the case's own fields; the answer stays the corpus's, which copies the
case's words, so every layout is grounded by construction.

Written apart from ``data/heldout/doctor_style.jsonl`` (hand-written cases that measure
this): a test checks that no layout text shares more than a stock phrase with them.
"""
from __future__ import annotations

import random

from medwb.tasks import corpus, prompts

# Heading names as different record systems print them, per part.
HEADINGS = {
    "general": ("一般情况", "基本信息", "患者信息"),
    "history": ("现病史", "病史", "HPI"),
    "past": ("既往史", "既往", "PMH"),
    "exam": ("体格检查", "查体", "PE"),
    "tests": ("辅助检查", "实验室及影像检查", "检查结果"),
    "admission": ("入院诊断", "诊断", "入院初步诊断"),
    "course": ("病程记录", "住院经过", "治疗经过记录"),
    "condition": ("出院前查房", "出院前情况", "目前情况"),
    "orders": ("出院医嘱", "医嘱", "出院带药及注意事项"),
}
LAYOUTS = ("shuffled_headings", "soap", "bullets", "numbered", "telegraphic", "one_line")
# The pasted-record prompt shares the apps' free-text path (prompts.DISCHARGE_PROMPT_PASTED).


def _sentences(text: str) -> list[str]:
    return [s + "。" for s in text.replace("；", "。").split("。") if s.strip()]


def _parts(case: corpus.Case, task: str) -> list[tuple[str, str]]:
    """(part, text) of the case, the discharge ones included for a discharge record."""
    parts = [("general", f"{case.sex}，{case.age}岁"), ("history", case.present_history),
             ("past", case.past_history), ("exam", case.physical_exam), ("tests", case.auxiliary_exams)]
    if task == "discharge":
        parts += [("admission", case.disease), ("course", case.course_notes),
                  ("condition", case.discharge_condition), ("orders", case.orders_brief)]
    return parts


def render(case: corpus.Case, task: str, layout: str, rng: random.Random) -> str:
    """The case's text (what a doctor pastes) in ``layout``."""
    parts = _parts(case, task)
    if layout == "shuffled_headings":
        head, rest = parts[:1], parts[1:]
        rng.shuffle(rest)
        return "\n".join(f"{rng.choice(HEADINGS[p])}：{t}" for p, t in head + rest)
    if layout == "soap":
        subjective = [t for p, t in parts if p in ("general", "history", "past")]
        objective = [t for p, t in parts if p in ("exam", "tests")]
        lines = [f"S：{'，'.join(subjective[:1])}。{''.join(subjective[1:])}", f"O：{''.join(objective)}"]
        if task == "discharge":
            d = dict(parts)
            lines += [f"A：{d['admission']}", f"P：{d['course']}{d['condition']}出院：{d['orders']}"]
        return "\n".join(lines)
    if layout in ("bullets", "numbered"):
        items = [f"{rng.choice(HEADINGS[p])}：{t}" if p in ("general", "admission") else s
                 for p, t in parts for s in ([t] if p in ("general", "admission") else _sentences(t))]
        mark = rng.choice(("- ", "• ", "· "))
        return "\n".join(f"{i}. {x}" if layout == "numbered" else mark + x for i, x in enumerate(items, 1))
    if layout == "telegraphic":
        return "；".join(corpus.abbreviate(t.rstrip("。"), rng, p=1.0).replace("。", "，").rstrip("，")
                        for _, t in parts) + "。"
    if layout == "one_line":
        return "".join(t if t.endswith("。") else t + "。" for _, t in parts)
    raise ValueError(f"layout {layout!r} is unknown: use one of {', '.join(LAYOUTS)}")


def prompt(case: corpus.Case, task: str, layout: str, rng: random.Random) -> str:
    """The user prompt of ``case`` for ``task`` with its text in ``layout``, as the apps'
    free-text path builds it."""
    text = render(case, task, layout, rng)
    if task == "diagnosis":
        return prompts.DIAGNOSIS_PROMPT_FREE_TEXT.format(chief_complaint=case.chief_complaint, case_summary=text)
    return prompts.DISCHARGE_PROMPT_PASTED.format(chief_complaint=case.chief_complaint, case_text=text)


def training_pairs(cases: list[corpus.Case], counts: dict[str, int], seed: str) -> list[tuple[str, str, str]]:
    """(task, user prompt, answer) for ``counts[task]`` cases drawn from ``cases``, each in a
    layout drawn at random."""
    rng = random.Random(seed)
    out = []
    for task, n in counts.items():
        for case in rng.sample(cases, min(n, len(cases))):
            answer = corpus.diagnosis_target(case) if task == "diagnosis" else corpus.discharge_target(case)
            out.append((task, prompt(case, task, rng.choice(LAYOUTS), rng), answer))
    return out
