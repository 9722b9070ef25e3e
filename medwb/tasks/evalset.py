"""The bundled evaluation set: PromptCBLUE-format tasks generated from the knowledge table.

PromptCBLUE (CHIP 2023) scores one model on many Chinese medical tasks, each a
JSON line with ``input``, ``target``, ``answer_choices``, ``task_type``, ``task_dataset``
and ``sample_id``. MedWB cannot ship the public data (and hospitals evaluate their own
models on their own files: ``medwb eval --eval-file``), so it ships a synthetic set in the
same format, one task per family the official scorer knows, each mirroring an official
task so that the official parse rules and metrics apply unchanged (``medwb.eval.scoring``):

============  =======================  ============================================
task          mirrors (rules, metric)  what the model must do
============  =======================  ============================================
MedWB-NER     CMeEE-V2 (micro-F1)      list the disease names and the numbers with
                                       units in a piece of case text
MedWB-CDN     CHIP-CDN (micro-F1)      map a colloquial diagnosis (宫外孕, AMI) to
                                       its standard name among four choices
MedWB-QIC     KUAKE-QIC (macro-F1)     which department a patient's complaint goes to
MedWB-STS     CHIP-STS (weighted-F1)   does a case summary fit a proposed diagnosis
MedWB-MRG     IMCS-V2-MRG (ROUGE-L)    a consultation dialogue -> a six-section report
MedWB-DDx     MedWB's own (macro-F1)   the 鉴别诊断 workflow: the primary diagnosis
MedWB-DSR     MedWB's own (ROUGE-L)    the 出院记录 workflow: five sections
============  =======================  ============================================

Gold labels are exact by construction: entities are found by matching the knowledge
table's diagnosis names and ``medwb.quality.grounding``'s number-with-unit pattern;
everything else is drawn by the generator. The test set comes from the standard held-out
cases, the demo
model's continued training (``training_pairs``) from training cases: disjoint by case
signature and by exact input. For MedWB-CDN one colloquial name of each disease is kept out of training
altogether, so that task measures generalisation, not recall of a memorised pair.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from functools import lru_cache
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import DATA_DIR
from medwb.quality import grounding
from medwb.tasks import corpus

EVAL_DIR = DATA_DIR / "eval"
EVAL_FILE = EVAL_DIR / "medwb-eval-v1.jsonl"
# task_dataset -> task_type (the official task_type of the task it mirrors)
TASKS = {"MedWB-NER": "ner", "MedWB-CDN": "normalization", "MedWB-QIC": "cls", "MedWB-STS": "cls",
         "MedWB-MRG": "report_generation", "MedWB-DDx": "diagnosis", "MedWB-DSR": "discharge"}
NER_TYPES = ("疾病", "数值")
STS_CHOICES = ("是的", "不是")
MRG_SECTIONS = ("主诉", "现病史", "辅助检查", "既往史", "诊断", "建议")
# The two workflows: their training examples come from the corpus, not from training_pairs.
WORKFLOW_TASKS = ("MedWB-DDx", "MedWB-DSR")


# --- the tasks, one function each: (case, rng) -> (input, target, answer_choices) -----------
def _disease_mentions(text: str, vocabulary: tuple[str, ...]) -> list[str]:
    """Knowledge-table diagnosis names in ``text``, longest match first, without overlaps,
    in order of appearance, each once."""
    taken, found = [False] * len(text), []
    for name in vocabulary:  # longest first
        for m in re.finditer(re.escape(name), text):
            if not any(taken[m.start():m.end()]):
                taken[m.start():m.end()] = [True] * len(name)
                found.append((m.start(), name))
    return list(dict.fromkeys(name for _, name in sorted(found)))


def ner(case: corpus.Case, rng: random.Random) -> tuple[str, str, list[str]]:
    other = rng.choice(case.differentials)[0]
    text = (case.present_history + case.past_history + case.signs[0] + case.tests[0]
            + f"需与{other}相鉴别。")
    entities = {"疾病": _disease_mentions(text, _vocabulary()),
                "数值": list(dict.fromkeys(grounding.findings(text)))}
    prompt = (f"找出下面病历中的疾病实体和数值实体（带单位的数值）：\n{text}\n"
              f"实体类型选项：{'，'.join(NER_TYPES)}\n答：")
    lines = [f"{t}实体：{'，'.join(entities[t])}" for t in NER_TYPES if entities[t]]
    target = "上述句子中的实体包含：\n" + "\n".join(lines) if lines else "上述句子中没有指定类型的实体"
    return prompt, target, list(NER_TYPES)


def cdn(case: corpus.Case, rng: random.Random, alias: str) -> tuple[str, str, list[str]]:
    choices = [case.disease] + [name for name, _ in case.differentials]
    rng.shuffle(choices)
    prompt = (f"诊断原文：{alias}\n请从下列候选中选出该诊断原文的标准化诊断名称。\n"
              f"选项：{'，'.join(choices)}\n答：")
    return prompt, f"该诊断原文的标准化名称是：\n{case.disease}", choices


def qic(case: corpus.Case, rng: random.Random) -> tuple[str, str, list[str]]:
    departments = _departments()
    first = case.present_history.split("。")[0] + "。"
    prompt = (f"患者咨询：{case.chief_complaint}。{first}\n请问应该挂哪个科室？\n"
              f"选项：{'，'.join(departments)}\n答：")
    return prompt, case.department, list(departments)


def sts(case: corpus.Case, rng: random.Random, positive: bool) -> tuple[str, str, list[str]]:
    proposed = case.disease if positive else rng.choice(case.differentials)[0]
    summary = f"{case.sex}，{case.age}岁，{case.chief_complaint}。{case.physical_exam}{case.auxiliary_exams}"
    prompt = (f"病历摘要：{summary}\n拟诊：{proposed}\n上述病历摘要与拟诊是否相符？\n"
              f"选项：{'，'.join(STS_CHOICES)}\n答：")
    return prompt, STS_CHOICES[0] if positive else STS_CHOICES[1], list(STS_CHOICES)


def mrg(case: corpus.Case, rng: random.Random) -> tuple[str, str, list[str] | None]:
    dialogue = "\n".join([
        f"患者：医生您好，我{case.chief_complaint}。",
        "医生：具体是什么情况？",
        f"患者：{case.present_history}",
        "医生：以前身体怎么样？",
        f"患者：{case.past_history}",
        "医生：做过什么检查吗？",
        f"患者：{case.auxiliary_exams}",
        f"医生：考虑是{case.disease}，建议{case.discharge_orders[0]}",
    ])
    prompt = (f"问诊对话历史：\n{dialogue}\n根据上述对话，给出诊疗报告\n"
              f"说明：诊疗报告分为{'，'.join(MRG_SECTIONS)}这六个章节。")
    values = (case.chief_complaint, case.present_history, case.auxiliary_exams, case.past_history,
              case.disease, case.discharge_orders[0])
    target = "上述问诊对话的诊疗报告如下：\n" + "\n".join(f"{k}：{v}" for k, v in zip(MRG_SECTIONS, values))
    return prompt, target, None


def ddx(case: corpus.Case, rng: random.Random) -> tuple[str, str, None]:
    return corpus.task_prompt(case, "diagnosis"), corpus.diagnosis_target(case), None


def dsr(case: corpus.Case, rng: random.Random) -> tuple[str, str, None]:
    return corpus.task_prompt(case, "discharge"), corpus.discharge_target(case), None


# --- shared tables -------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    return tuple(sorted(corpus.diagnosis_vocabulary(), key=lambda n: (-len(n), n)))


@lru_cache(maxsize=1)
def _departments() -> tuple[str, ...]:
    return tuple(dict.fromkeys(d.department for d in corpus.load_knowledge()))


def alias_split(disease: corpus.Disease) -> tuple[tuple[str, ...], str | None]:
    """(aliases trained on, the alias kept for the test set): the kept one is chosen by a
    hash of the disease name, so it does not depend on the table's order."""
    if not disease.aliases:
        return (), None
    k = int(hashlib.sha256(disease.name.encode()).hexdigest(), 16) % len(disease.aliases)
    return tuple(a for i, a in enumerate(disease.aliases) if i != k), disease.aliases[k]


def _record(task: str, sample_id: str, made: tuple) -> dict:
    prompt, target, choices = made
    return {"sample_id": sample_id, "task_type": TASKS[task], "task_dataset": task,
            "input": prompt, "target": target, "answer_choices": choices}


# --- the shipped test set ----------------------------------------------------------------------
def test_records() -> list[dict]:
    """The bundled test set: per task one sample per standard held-out case (two per
    disease, so every department and disease is represented); MedWB-CDN one per disease,
    on its kept-out colloquial name."""
    diseases = {d.name: d for d in corpus.load_knowledge()}
    cases = corpus.heldout_cases("standard")
    records = []
    for task in TASKS:
        seen: set[str] = set()
        for i, case in enumerate(cases):
            rng = random.Random(f"medwb-eval-v1/{task}/{case.case_id}")
            if task == "MedWB-CDN":
                _, kept = alias_split(diseases[case.disease])
                if kept is None or case.disease in seen:
                    continue
                seen.add(case.disease)
                made = cdn(case, rng, kept)
            elif task == "MedWB-STS":
                made = sts(case, rng, positive=i % 2 == 0)  # alternate: any stratified cut has both
            else:
                made = _MAKERS[task](case, rng)
            records.append(_record(task, f"{task}-{case.case_id}", made))
    return records


def write(path: Path = EVAL_FILE) -> Path:
    from medwb.paths import write_text_atomic
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in test_records())
    write_text_atomic(path, text)
    return path


# --- training data for the demo model ----------------------------------------------------------
def training_pairs(cases: list[corpus.Case], counts: dict[str, int], seed: str) -> list[tuple[str, str, str]]:
    """(task, input, target) examples of the non-workflow tasks, ``counts[task]`` each,
    drawn from training ``cases`` (the workflows' own examples come from the corpus).
    Disjoint cases are not enough for short prompts (a complaint and one sentence recur
    across cases), so an example whose input equals a test input is drawn again."""
    rng = random.Random(seed)
    diseases = {d.name: d for d in corpus.load_knowledge()}
    test_inputs = {r["input"] for r in test_records()}
    out = []
    for task, n in counts.items():
        trainable = [t for t in _MAKERS if t not in WORKFLOW_TASKS]
        if task not in trainable:
            raise MedwbError(f"recipe: continued.tasks names {task!r}: use one of {', '.join(trainable)}")
        made = tries = 0
        while made < n:
            tries += 1
            if tries > 20 * n:
                raise MedwbError(f"recipe: continued.tasks asks {n} {task} examples but the knowledge "
                                 "table gives too few that differ from the test set: ask for fewer")
            case = rng.choice(cases)
            if task == "MedWB-CDN":
                trained, _ = alias_split(diseases[case.disease])
                if not trained:
                    continue
                example = cdn(case, rng, rng.choice(trained))
            elif task == "MedWB-STS":
                example = sts(case, rng, positive=made % 2 == 0)
            else:
                example = _MAKERS[task](case, rng)
            if example[0] in test_inputs:
                continue
            out.append((task, example[0], example[1]))
            made += 1
    rng.shuffle(out)
    return out


_MAKERS = {"MedWB-NER": ner, "MedWB-CDN": cdn, "MedWB-QIC": qic, "MedWB-STS": sts, "MedWB-MRG": mrg,
           "MedWB-DDx": ddx, "MedWB-DSR": dsr}
