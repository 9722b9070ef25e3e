"""Grounding: are the findings an answer writes present in the record it was written from?

A small model (and a large one) can name the right diagnosis while inventing its basis
("体温38.5×10^9/L" for a case without fever). A *finding* here is a number with its unit
(``2860IU/L``, ``90/56mmHg``, ``14.2×10^9/L``, ``38.5℃``, ``0.1g``, ``3天``); bare numbers
(list numbering, ordinals) are not findings. A finding is grounded when the same number
with the same unit occurs in the source text, so "BP 90/56mmHg" in the record grounds
"血压90/56mmHg" in the answer. Used for the demo model's quality gate and, later, to flag
unsupported findings for the doctor.
"""
from __future__ import annotations

import re

# CJK units that follow a number in records (longest first for the alternation).
_CJK_UNITS = ("次/分", "个月", "小时", "分钟", "岁", "天", "日", "周", "年", "次", "粒", "片", "支", "滴", "层")
_NUMBER = r"\d+(?:\.\d+)?(?:[/:～~\-]\d+(?:\.\d+)?)*"
_UNIT = (r"(?:×10\^\d+(?:/[A-Za-zμ]+)?|[A-Za-zμ%‰℃°][A-Za-zμ%‰℃°/·\d^]*|"
         + "|".join(map(re.escape, _CJK_UNITS)) + ")")
FINDING = re.compile(rf"(?<![\d.A-Za-z^]){_NUMBER}\s*{_UNIT}")


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def findings(text: str) -> list[str]:
    """Every number-with-unit in ``text``, in order (spaces removed)."""
    return [_squash(m.group(0)) for m in FINDING.finditer(text or "")]


def occurs(finding: str, source: str) -> bool:
    """``finding`` appears in ``source`` as a whole number (``5ml`` is not in ``15ml``),
    spaces ignored (``BP 90/56 mmHg`` holds ``90/56mmHg``)."""
    pattern = r"(?<![\d.])" + r"\s*".join(map(re.escape, finding))
    return re.search(pattern, source or "") is not None


def ungrounded(text: str, source: str) -> list[str]:
    """The findings of ``text`` that do not occur in ``source``."""
    return [f for f in findings(text) if not occurs(f, source)]


def section(text: str, heading: str, next_headings: tuple[str, ...] = ()) -> str:
    """The body after ``heading：`` up to the next of ``next_headings`` (or the end)."""
    start = text.find(f"{heading}：")
    if start < 0:
        return ""
    body = text[start + len(heading) + 1:]
    ends = [body.find(f"{h}：") for h in next_headings if f"{h}：" in body]
    return body[:min(ends)] if ends else body


def counts(pairs) -> tuple[int, int]:
    """(grounded, total) findings over ``(answer_text, source_text)`` pairs, pooled."""
    grounded = total = 0
    for text, source in pairs:
        found = findings(text)
        total += len(found)
        grounded += sum(occurs(f, source) for f in found)
    return grounded, total
