"""ROUGE-L for Chinese text: characters are the tokens (no spaces to split on)."""
from __future__ import annotations


def rouge_l_chars(candidates: list[str], references: list[str]) -> float:
    """Mean character-level ROUGE-L F1 (Chinese has no spaces: characters are the tokens)."""
    from rouge_score import rouge_scorer

    class _Chars:
        def tokenize(self, text):
            return [c for c in text if not c.isspace()]

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Chars())
    scores = [scorer.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)]
    return round(sum(scores) / len(scores), 4) if scores else None
