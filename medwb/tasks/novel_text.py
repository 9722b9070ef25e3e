"""Records whose sentences no knowledge table holds: training cases that can only be copied.

Why: the candidate demo model writes a discharge record from memory of the knowledge table,
steered by the case, rather than copying it (docs/demo-model.md, #36): of 60 findings in its
drafts that the case does not have, 56 were sentences the table lists for the case's own
disease. Every sentence it had to copy was one it had memorized, so recalling and copying
gave the same text and training could not tell them apart. In a *novel* case every list of
the record (signs, tests, treatment, course, discharge condition, orders) is rewritten:

- each sentence joins 2-3 clauses taken from different sentences of the table (any disease),
  so its words are the corpus's words but the sentence is not one the table holds;
- every number in it is drawn again (same digits and decimals, same unit), so no value can
  be recalled either.

The discharge record of such a case (``corpus.discharge_target``, unchanged) is right only
when copied. The disease, age, sex and chief complaint stay the case's own.

Measured (docs/demo-model.md): 400 steps on such records continuing the candidate's stage 1
*lowered* the discharge record's grounding (35% against 62% on 24 standard cases, AMD EPYC
AVX2): the model learned to write recombined clauses, not to copy. No recipe uses it yet; it
is kept for a stage 1 that trains on such records from its first corpus step.
"""
from __future__ import annotations

import dataclasses
import random
import re

from medwb.tasks import corpus

LIST_FIELDS = ("signs", "tests", "treatment", "progress", "discharge_orders")
TEXT_FIELDS = ("discharge_condition",)
_CLAUSE_END = re.compile(r"[，；。]")
# A value, not the base or exponent of a unit such as ×10^9/L (kept, as records write it).
_NUMBER = re.compile(r"(?<![\d.^])\d+(?:\.\d+)?(?![\d.]*\^)")


def clause_pools(diseases=None) -> dict[str, list[tuple[str, str]]]:
    """Per field, every (disease, clause) of the table's sentences: split at ，；。"""
    pools: dict[str, list[tuple[str, str]]] = {}
    for d in diseases or corpus.load_knowledge():
        for field in LIST_FIELDS + TEXT_FIELDS:
            for sentence in getattr(d, field):
                for clause in _CLAUSE_END.split(sentence):
                    if clause.strip():
                        pools.setdefault(field, []).append((d.name, clause.strip()))
    return pools


def table_sentences(diseases=None) -> set[str]:
    return {s for d in diseases or corpus.load_knowledge() for f in LIST_FIELDS + TEXT_FIELDS for s in getattr(d, f)}


def redraw_numbers(text: str, rng: random.Random) -> str:
    """Every number in ``text`` drawn again with the same number of digits and decimals."""
    def draw(m: re.Match) -> str:
        whole, _, frac = m.group(0).partition(".")
        lead = str(rng.randint(1, 9))  # no leading zero; a lone digit not 0 either ("0周后")
        out = lead + "".join(str(rng.randint(0, 9)) for _ in whole[1:])
        return out + ("." + "".join(str(rng.randint(0, 9)) for _ in frac) if frac else "")
    return _NUMBER.sub(draw, text)


def novel_sentence(rng: random.Random, pool: list[tuple[str, str]], known: set[str]) -> str:
    """2-3 clauses of different diseases' sentences, numbers redrawn, never a table sentence."""
    while True:
        picked = rng.sample(pool, rng.randint(2, 3))
        if len({d for d, _ in picked}) < len(picked):
            continue
        sentence = redraw_numbers("，".join(c for _, c in picked), rng) + "。"
        if sentence not in known:
            return sentence


def novel_case(case: corpus.Case, rng: random.Random, pools: dict, known: set[str]) -> corpus.Case:
    """``case`` with every list and the discharge condition rewritten (the same lengths)."""
    changed = {f: tuple(novel_sentence(rng, pools[f], known) for _ in getattr(case, f)) for f in LIST_FIELDS}
    changed.update({f: novel_sentence(rng, pools[f], known) for f in TEXT_FIELDS})
    return dataclasses.replace(case, **changed)


def novel_cases(cases: list[corpus.Case], seed: str) -> list[corpus.Case]:
    """Each of ``cases`` rewritten, the same for the same seed."""
    rng = random.Random(seed)
    diseases = corpus.load_knowledge()
    pools, known = clause_pools(diseases), table_sentences(diseases)
    return [novel_case(c, rng, pools, known) for c in cases]


# A passage drill: copy one section of a record verbatim (原文摘录). Measured on a stage 1
# trained on novel discharge records (docs/demo-model.md): teacher-forced, it predicts 83-85%
# of the tokens inside a clause and 82% of the digits, but only 43-46% of the tokens that
# start a clause. Finishing a clause, it must find that clause in the record and go on with
# what follows it there; the preceding token (，or 。) occurs dozens of times in a record, so
# only a match on the clause's last several tokens finds the place. The named-value drill
# (tasks.copy_drill) never needs that: its key, a finding's name, is distinctive. Neither
# continuing a stage 1 on it (400 steps) nor training on it beside the named drill from the
# first step (1,500 steps) copied a held-out passage; mixed in, it delayed the named lookup.
PASSAGE_TASK_LINE = "任务：原文摘录"
PASSAGE_SECTIONS = {"体格检查": "signs", "辅助检查": "tests", "诊疗经过": "treatment", "病程记录": "progress",
                    "出院情况": "discharge_condition", "出院医嘱": "discharge_orders"}


def passage_drill(rng: random.Random, pools: dict, known: set[str]) -> tuple[str, str]:
    """(prompt, answer): a record of 2-4 sections of 1-4 novel sentences; the answer is one of
    them, asked by its heading, verbatim."""
    names = rng.sample(sorted(PASSAGE_SECTIONS), rng.randint(2, 4))
    sections = [(n, "".join(novel_sentence(rng, pools[PASSAGE_SECTIONS[n]], known) for _ in range(rng.randint(1, 4))))
                for n in names]
    asked, text = rng.choice(sections)
    record = "\n".join(f"{n}：{t}" for n, t in sections)
    return f"{PASSAGE_TASK_LINE}\n{record}\n请原文摘录：{asked}。", text


def passage_drills(n: int, seed: str) -> list[tuple[str, str]]:
    """``n`` passage drills, the same for the same seed."""
    rng = random.Random(seed)
    diseases = corpus.load_knowledge()
    pools, known = clause_pools(diseases), table_sentences(diseases)
    return [passage_drill(rng, pools, known) for _ in range(n)]
