"""A copy drill for the demo model: excerpt named findings from a record (摘录).

Why: the demo model writes the findings of its 诊断依据 and discharge records from memory
of the training cases about half the time instead of copying the case's own (a 1-month
history for a case that says 3 months; an age recalled, not read). Continuing the shipped
64-wide model on this drill for 600 steps did not teach it (value recall 1 of 156 on
held-out drills, 2026-12-06): it has no head that finds a value by its name. The drill
trains that skill from the start of a build, where nothing but copying can answer it:

- a record of 4-9 findings, each a name and a value drawn at random (a value never
  repeats a typical one of a disease, so recall cannot be right);
- among them the case's kinds of findings: vital signs and laboratory values with the
  units ``medwb.quality.grounding`` counts, an age, and a chief complaint from the
  knowledge table with a random duration (the most frequent wrong finding);
- the question names 1-4 of them in a random order; the answer repeats each with its
  value, in that order: found by content, not by position.

Examples are chat pairs like the corpus's, in the same vocabulary; a recipe's
``copy_drill`` count says how many join its training texts (covered by its data hash).
"""
from __future__ import annotations

import random

from medwb.tasks import corpus

TASK_LINE = "任务：摘录"


def _decimal(rng: random.Random, lo: int, hi: int) -> str:
    return f"{rng.randint(lo, hi)}.{rng.randint(0, 9)}"


# name -> value drawn at random, in the units the corpus writes.
VALUES = {
    "血压": lambda r: f"{r.randint(80, 190)}/{r.randint(45, 115)}mmHg",
    "心率": lambda r: f"{r.randint(45, 160)}次/分",
    "脉搏": lambda r: f"{r.randint(45, 160)}次/分",
    "呼吸": lambda r: f"{r.randint(12, 40)}次/分",
    "体温": lambda r: f"{_decimal(r, 35, 40)}℃",
    "白细胞": lambda r: f"{_decimal(r, 2, 28)}×10^9/L",
    "血红蛋白": lambda r: f"{r.randint(50, 175)}g/L",
    "血小板": lambda r: f"{r.randint(20, 480)}×10^9/L",
    "血糖": lambda r: f"{_decimal(r, 2, 30)}mmol/L",
    "血钾": lambda r: f"{_decimal(r, 2, 6)}mmol/L",
    "肌酐": lambda r: f"{r.randint(35, 900)}μmol/L",
    "CRP": lambda r: f"{r.randint(1, 250)}mg/L",
    "降钙素原": lambda r: f"{_decimal(r, 0, 20)}ng/ml",
    "ALT": lambda r: f"{r.randint(8, 950)}U/L",
    "淀粉酶": lambda r: f"{r.randint(25, 3500)}U/L",
    "HbA1c": lambda r: f"{_decimal(r, 4, 15)}%",
    "血氧饱和度": lambda r: f"{r.randint(75, 100)}%",
    "射血分数": lambda r: f"{r.randint(15, 75)}%",
    "体重": lambda r: f"{r.randint(35, 120)}kg",
    "出血量": lambda r: f"{r.randint(20, 1500)}ml",
    "包块": lambda r: f"{_decimal(r, 0, 12)}cm×{_decimal(r, 0, 12)}cm",
    "年龄": lambda r: f"{r.randint(1, 95)}岁",
}
DURATION_UNITS = ("小时", "天", "周", "个月", "年")


def _complaint(rng: random.Random, complaints: list[str]) -> str:
    duration = f"{rng.randint(1, 30)}{rng.choice(DURATION_UNITS)}"
    return rng.choice(complaints).replace("{d}", duration)


def example(rng: random.Random, complaints: list[str]) -> tuple[str, str]:
    """One drill: (user prompt, answer)."""
    names = rng.sample(sorted(VALUES), rng.randint(3, 8))
    items = [(n, VALUES[n](rng)) for n in names]
    if rng.random() < 0.5:  # the chief complaint, with a random duration, at a random place
        items.insert(rng.randint(0, len(items)), ("主诉", _complaint(rng, complaints)))
    asked = rng.sample(items, rng.randint(1, min(4, len(items))))
    record = "，".join(f"{n}：{v}" if n == "主诉" else n + v for n, v in items)
    prompt = f"{TASK_LINE}\n记录：{record}。\n请按顺序摘录：{'、'.join(n for n, _ in asked)}。"
    answer = "；".join(f"{n}：{v}" if n == "主诉" else n + v for n, v in asked)
    return prompt, answer


def examples(n: int, seed: str) -> list[tuple[str, str]]:
    """``n`` drills, the same for the same seed."""
    rng = random.Random(seed)
    complaints = sorted({c for d in corpus.load_knowledge() for c in d.chief_complaints})
    return [example(rng, complaints) for _ in range(n)]
