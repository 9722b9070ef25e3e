"""Task-quality measures for the two workflows (shared by the demo-model build, the
tests and the comparison notebook)."""
from __future__ import annotations

from medwb import corpus, prompts


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


def rate(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def heldout_prompts(n: int) -> list[str]:
    """Chat-formatted prompts of the first ``n`` held-out cases of each workflow, alternating."""
    per_task = [corpus.load_records(t, limit=n) for t in corpus.TASKS]
    mixed = [r for pair in zip(*per_task) for r in pair][:n]
    return [prompts.render_chat([{"role": "user", "content": r["input"]}]) for r in mixed]
