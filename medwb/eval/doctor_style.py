"""The demo model on cases written the way doctors write them, not the way the generator does.

``data/heldout/doctor_style.jsonl``: 72 cases (one diagnosis and one discharge case per
disease of the knowledge table), written by hand apart from ``medwb.tasks.corpus``, in nine
styles (headed sections in other orders, one paragraph, SOAP, telegraphic abbreviations,
long narratives, bullet and numbered lists, mixed English), 179 to 1136 characters. A
workshop audience types its own case first; this is how the model meets it.

Each case is put to the model as the apps' free-text path does: a diagnosis case as
主诉 + 病历特点 (``prompts.DIAGNOSIS_PROMPT_FREE_TEXT``); a discharge case as the record
pasted whole after its task line and chief complaint, with the discharge instruction. The
figures, each with a 95% interval: the **task-format rate** (a diagnosis answer with its
初步诊断 and 诊断依据 headings and no discharge sections; a discharge record with its five sections and
no diagnosis headings), the **primary-diagnosis rate** and top-3 (diagnosis), and
**grounding** (the findings written that occur in the case), its interval bootstrapped
over cases since one answer's findings are not independent.
"""
from __future__ import annotations

import random

from medwb import jsonl
from medwb.paths import DATA_DIR
from medwb.tasks import corpus, prompts, workflow
from medwb.quality import grounding
from medwb.quality.intervals import wilson

SET = DATA_DIR / "heldout" / "doctor_style.jsonl"
DISCHARGE_PROMPT = prompts.DISCHARGE_PROMPT_PASTED
BOOTSTRAP = 2000


def load() -> list[dict]:
    return jsonl.read(SET)


def user_prompt(sample: dict) -> str:
    if sample["task_type"] == "diagnosis":
        return prompts.DIAGNOSIS_PROMPT_FREE_TEXT.format(chief_complaint=sample["chief_complaint"],
                                                         case_summary=sample["case_text"])
    return DISCHARGE_PROMPT.format(**sample)


def in_task(output: str, task: str) -> bool:
    """The answer keeps to the task it was asked: its own headings, none of the other's."""
    diagnosis = all(f"{h}：" in output for h in (prompts.PRIMARY_HEADING, prompts.BASIS_HEADING))
    discharge_marks = any(f"{h}：" in output for h in ("出院诊断", "诊疗经过", "出院医嘱"))
    if task == "diagnosis":
        return diagnosis and not discharge_marks
    return workflow.has_all_sections(output) and f"{prompts.PRIMARY_HEADING}：" not in output


def _share(flags: list[bool]) -> dict:
    k, n = sum(flags), len(flags)
    return {"rate": round(k / n, 4) if n else 0.0, "ci95": wilson(k, n), "n": n}


def _grounding(pairs: list[tuple[str, str]]) -> dict:
    per_case = [grounding.counts([p]) for p in pairs]
    grounded, total = sum(g for g, _ in per_case), sum(t for _, t in per_case)
    rng, ratios = random.Random(0), []
    for _ in range(BOOTSTRAP):
        draw = [per_case[rng.randrange(len(per_case))] for _ in per_case]
        t = sum(x for _, x in draw)
        if t:
            ratios.append(sum(g for g, _ in draw) / t)
    ratios.sort()
    ci = [round(ratios[int(0.025 * len(ratios))], 4), round(ratios[int(0.975 * len(ratios)) - 1], 4)] if ratios \
        else [0.0, 1.0]
    return {"rate": round(grounded / total, 4) if total else 0.0, "ci95": ci, "findings": total}


def score(samples: list[dict], outputs: list[str]) -> dict:
    """The figures per task from the model's ``outputs`` (in ``samples``' order)."""
    vocab = corpus.diagnosis_vocabulary()
    out: dict = {"n_cases": len(samples)}
    for task in ("diagnosis", "discharge"):
        idx = [i for i, s in enumerate(samples) if s["task_type"] == task]
        outs = [outputs[i] for i in idx]
        figures = {"task_format": _share([in_task(o, task) for o in outs])}
        if task == "diagnosis":
            named = [workflow.named_diagnoses(o, vocab) for o in outs]
            truth = [samples[i]["disease"] for i in idx]
            figures["primary"] = _share([n[:1] == [d] for n, d in zip(named, truth)])
            figures["top3"] = _share([d in n[:3] for n, d in zip(named, truth)])
            checked = [grounding.section(o, prompts.BASIS_HEADING, (prompts.DIFFERENTIAL_HEADING,)) for o in outs]
        else:
            figures["sections"] = _share([workflow.has_all_sections(o) for o in outs])
            checked = outs
        figures["grounding"] = _grounding([(c, user_prompt(samples[i])) for c, i in zip(checked, idx)])
        out[task] = figures
    return out


def evaluate(backend, max_new_tokens: dict, batch_size: int = 24, samples: list[dict] | None = None) -> dict:
    """Greedy answers of ``backend`` (a batch ``generate``, as the demo build's) scored."""
    samples = samples if samples is not None else load()
    outputs = [""] * len(samples)
    for task in ("diagnosis", "discharge"):
        idx = [i for i, s in enumerate(samples) if s["task_type"] == task]
        chats = [prompts.user_turn(user_prompt(samples[i])) for i in idx]
        for i, o in zip(idx, backend.generate(chats, max_new_tokens=max_new_tokens[task], batch_size=batch_size)):
            outputs[i] = o
    return {**score(samples, outputs), "examples": {s["sample_id"]: outputs[i] for i, s in enumerate(samples)}}


def format_figures(f: dict) -> str:
    def pct(x):
        return f"{x['rate']:.1%} [{x['ci95'][0]:.0%}, {x['ci95'][1]:.0%}]"
    dx, dc = f["diagnosis"], f["discharge"]
    return "\n".join([
        f"cases written the way doctors write ({SET.name}: {dx['task_format']['n']} diagnosis, "
        f"{dc['task_format']['n']} discharge; 95% intervals):",
        f"  diagnosis: keeps to the task {pct(dx['task_format'])}; true diagnosis named first {pct(dx['primary'])}, "
        f"among the first three {pct(dx['top3'])}; grounding {pct(dx['grounding'])} of "
        f"{dx['grounding']['findings']} findings",
        f"  discharge: keeps to the task {pct(dc['task_format'])}; all five sections {pct(dc['sections'])}; "
        f"grounding {pct(dc['grounding'])} of {dc['grounding']['findings']} findings"])
