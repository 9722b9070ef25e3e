"""Task-quality measures for the two workflows: is the true diagnosis named (first, among
the first three), are all discharge sections there, and ROUGE-L against the reference
record and FP32's output (shared by the demo-model build, the benchmark and the tests)."""
from __future__ import annotations

from medwb.quality import grounding
from medwb.tasks import corpus, prompts


def named_diagnoses(text: str, vocabulary: list[str]) -> list[str]:
    """Diagnosis names in ``text`` in order of first appearance (longest match wins, so
    "急性胆囊炎" is not also counted as a shorter name inside it)."""
    by_length = sorted(set(vocabulary), key=len, reverse=True)
    found, i = [], 0
    while i < len(text):
        for name in by_length:
            if text.startswith(name, i):
                if name not in found:
                    found.append(name)
                i += len(name)
                break
        else:
            i += 1
    return found


def diagnosis_top3_hit(output: str, true_diagnosis: str, vocabulary: list[str]) -> bool:
    """True when the true diagnosis is among the first three diagnoses the output names."""
    return true_diagnosis in named_diagnoses(output, vocabulary)[:3]


def missing_sections(output: str) -> list[str]:
    """Discharge-record headings (each followed by a full-width colon) not in ``output``."""
    return [h for h in prompts.DISCHARGE_SECTIONS if f"{h}：" not in output]


def has_all_sections(output: str) -> bool:
    return not missing_sections(output)


# Heading variants seen in discharge records, per canonical section (the canonical first).
SECTION_VARIANTS = {
    "出院诊断": ("出院诊断",),
    "入院情况": ("入院情况", "入院时情况", "入院时病情"),
    "诊疗经过": ("诊疗经过", "住院经过", "治疗经过", "诊治经过"),
    "出院情况": ("出院情况", "出院时情况", "出院时病情"),
    "出院医嘱": ("出院医嘱", "出院建议"),
}


def _heading_pattern():
    import re
    names = sorted({v for vs in SECTION_VARIANTS.values() for v in vs}, key=len, reverse=True)
    # At a line start: optional numbering (一、 1. (1)) or 【】 brackets, the name, then a
    # colon (full-width or ASCII), a closing bracket, or the end of the line.
    return re.compile(r"(?m)^[ \t]*(?:[一二三四五六七八九十]+[、.．]|\d+[、.．]|[（(]\d+[)）])?[ \t]*【?("
                      + "|".join(map(re.escape, names)) + r")(?:】[ \t]*[：:]?|[ \t]*[：:]|[ \t]*$)")


def parse_sections(text: str) -> dict[str, str | None]:
    """The five discharge sections of a draft, tolerant of order and heading variants
    (住院经过, 出院建议, ``1. 出院诊断:``, ``【出院情况】``): canonical heading -> its text
    (stripped; "" when the heading has nothing after it), None when it is missing. A section
    runs to the next heading; a heading written twice keeps its last text."""
    canonical = {v: k for k, vs in SECTION_VARIANTS.items() for v in vs}
    found: dict[str, str | None] = {k: None for k in SECTION_VARIANTS}
    marks = list(_heading_pattern().finditer(text or ""))
    for m, nxt in zip(marks, marks[1:] + [None]):
        found[canonical[m.group(1)]] = text[m.end():nxt.start() if nxt else len(text)].strip()
    return found


def section_status(sections: dict[str, str | None]) -> dict[str, str]:
    """complete / empty / missing per section, for the card."""
    return {k: "missing" if v is None else "empty" if not v else "complete" for k, v in sections.items()}


def rate(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def diagnosis_scores(outputs: list[str], diseases: list[str], inputs: list[str] | None = None) -> dict:
    """Diagnosis answers against the true diagnoses: named first, among the first three, and
    (with the case texts) grounding of the findings written in 诊断依据."""
    vocab = corpus.diagnosis_vocabulary()
    named = [named_diagnoses(o, vocab) for o in outputs]
    out = {"top3_rate": round(rate(d in n[:3] for n, d in zip(named, diseases)), 4),
           "primary_rate": round(rate(n[:1] == [d] for n, d in zip(named, diseases)), 4)}
    if inputs is not None:
        basis = [grounding.section(o, prompts.BASIS_HEADING, (prompts.DIFFERENTIAL_HEADING,)) for o in outputs]
        out.update(_grounding(basis, inputs))
    return out


def discharge_scores(outputs: list[str], inputs: list[str] | None = None) -> dict:
    """Discharge records: all five section headings present, all five parsed non-empty
    (``parse_sections``), and (with the case texts) grounding of the findings anywhere in
    the record."""
    out = {"sections_rate": round(rate(has_all_sections(o) for o in outputs), 4),
           "nonempty_sections_rate": round(rate(all(parse_sections(o).values()) for o in outputs), 4)}
    if inputs is not None:
        out.update(_grounding(outputs, inputs))
    return out


def _grounding(checked: list[str], inputs: list[str]) -> dict:
    grounded, total = grounding.counts(zip(checked, inputs))
    return {"grounding_rate": round(grounded / total, 4) if total else 0.0, "findings": total}


def score_outputs(texts: list[str], cases: list[dict], reference_texts: list[str] | None) -> dict:
    """Task quality (diagnosis top-3, discharge sections, ROUGE-L vs the reference record)
    and agreement with FP32's output text (ROUGE-L)."""
    from medwb.quality.rouge import rouge_l_chars
    q: dict = {}
    for task in ("diagnosis", "discharge"):
        idx = [i for i, c in enumerate(cases) if c["task"] == task]
        if not idx:
            continue
        outs = [texts[i] for i in idx]
        if task == "diagnosis":
            q["diagnosis_top3_rate"] = diagnosis_scores(outs, [cases[i]["disease"] for i in idx])["top3_rate"]
        else:
            q["discharge_complete_rate"] = discharge_scores(outs)["sections_rate"]
        q[f"{task}_rouge_l_vs_record"] = rouge_l_chars(outs, [cases[i]["target"] for i in idx])
    if reference_texts:
        q["rouge_l_vs_fp32"] = rouge_l_chars(texts, reference_texts)
    q["n_cases"] = len(cases)
    return q
