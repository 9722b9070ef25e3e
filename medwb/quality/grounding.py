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

import dataclasses
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


# --- flags for the doctor: what in a draft is not in the record --------------------------
# Dates as records write them; a value flag is not raised again inside a date.
DATE = re.compile(r"\d{4}\s*[-/.年]\s*\d{1,2}\s*[-/.月]\s*\d{1,2}\s*日?|\d{1,2}\s*月\s*\d{1,2}\s*日")
# A dose: a number with a mass, volume or unit-count unit; the drug is the CJK/Latin run
# just before it, less the verbs and timing words that precede drugs in orders.
# A concentration (78g/L, 5mg/dl) is a lab value, not a dose: no "/" after the unit.
_DOSE = r"\d+(?:\.\d+)?\s*(?:mg|g|ml|mL|μg|ug|IU|U|万U|片|粒|支)(?![A-Za-z/])"
DRUG_DOSE = re.compile(rf"([\u4e00-\u9fffA-Za-z]{{2,16}})\s*({_DOSE})")
_DRUG_PREFIXES = ("继续口服", "继续", "出院后", "术后", "术前", "给予", "予以", "予", "口服", "静脉滴注", "静滴",
                  "静推", "肌注", "肌内注射", "皮下注射", "雾化吸入", "改为", "加用", "联合", "每日", "使用", "应用",
                  "qd", "bid", "tid", "qid", "qn", "prn", "并", "及", "和")


@dataclasses.dataclass(frozen=True)
class Flag:
    """Something a draft states that the source record does not: ``kind`` is value (a
    number with its unit), date, drug or diagnosis; ``start``/``end`` index the draft."""
    kind: str
    text: str
    start: int
    end: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def drug_name(run: str) -> str:
    """The drug in the text run before a dose: what follows the last verb, timing word or
    frequency (qd, bid, ...) in the run, so "qd口服琥珀酸亚铁" names 琥珀酸亚铁."""
    cut = 0
    for p in _DRUG_PREFIXES:
        at = run.rfind(p)
        if at >= 0 and len(run) - (at + len(p)) >= 2:
            cut = max(cut, at + len(p))
    return run[cut:]


def flags(draft: str, source: str, diagnoses: list[str] | None = None, section_text: str | None = None) -> list[Flag]:
    """Every value, date and drug in ``draft`` that does not occur in ``source``, and (with
    the ``diagnoses`` vocabulary) every diagnosis named in ``section_text`` (the draft's
    discharge diagnosis, say) that the source does not name. In draft order, for the
    doctor to check: a flag says "not in the record", not "wrong"."""
    out: list[Flag] = []
    squashed = _squash(source)
    dates = [(m.start(), m.end()) for m in DATE.finditer(draft)]
    for a, b in dates:
        if _squash(draft[a:b]) not in squashed:
            out.append(Flag("date", draft[a:b], a, b))
    for m in FINDING.finditer(draft):
        if any(a <= m.start() < b for a, b in dates):
            continue
        if not occurs(_squash(m.group(0)), source):
            out.append(Flag("value", m.group(0), m.start(), m.end()))
    for m in DRUG_DOSE.finditer(draft):
        name = drug_name(m.group(1))
        if name not in source:
            start = m.start(1) + m.group(1).rindex(name)
            out.append(Flag("drug", name, start, start + len(name)))
    if diagnoses and section_text:
        offset = draft.find(section_text)
        by_length = sorted(set(diagnoses), key=len, reverse=True)
        taken: list[tuple[int, int]] = []
        for name in by_length:
            for m in re.finditer(re.escape(name), section_text):
                span = (m.start(), m.end())
                if any(a < span[1] and span[0] < b for a, b in taken):
                    continue
                taken.append(span)
                if name not in source:
                    start = max(offset, 0) + span[0]
                    out.append(Flag("diagnosis", name, start, start + len(name)))
    return sorted(out, key=lambda f: (f.start, f.kind))
