"""Agreement of a variant's greedy outputs with the FP32 reference's, on the same prompts
(the held-out clinical prompts of the benchmark): exact match, the first divergent token,
the share of the reference's tokens reproduced before it, and (where both backends expose
logits) the cosine of the last-token logits. This is the generation-level similarity every
variant gets, the ones without logits too (llm-cli); medwb.eval.fidelity is the
token-by-token one."""
from __future__ import annotations

import statistics


def prefix_agreement(a: list[int], b: list[int]) -> float:
    """Share of the reference's tokens reproduced before the first difference."""
    if not b:
        return 1.0 if not a else 0.0
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n / len(b)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where ``a`` leaves the reference ``b`` (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def cosine(u, v) -> float:
    import numpy as np
    u, v = np.asarray(u, dtype=np.float64).ravel(), np.asarray(v, dtype=np.float64).ravel()
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def agreement(result: dict, reference: dict) -> dict:
    """Greedy-token agreement with the reference's outputs on the same prompts (and the
    last-token logit cosine where both backends expose logits)."""
    pairs = list(zip(result["output_ids"], reference["output_ids"]))
    out = {"n_prompts": len(pairs),
           "exact_match_rate": round(sum(a == b for a, b in pairs) / len(pairs), 4),
           "prefix_agreement": round(sum(prefix_agreement(a, b) for a, b in pairs) / len(pairs), 4)}
    # Where greedy decoding first leaves FP32's text, per prompt; the median over the prompts
    # that diverge at all (None: every output is FP32's).
    firsts = [first_divergence(a, b) for a, b in pairs]
    out["first_divergence"] = firsts
    diverged = [f for f in firsts if f is not None]
    out["first_divergence_median"] = statistics.median_low(diverged) if diverged else None
    logits = [(u, v) for u, v in zip(result.get("last_logits", []), reference.get("last_logits", []))
              if u is not None and v is not None]
    if logits:
        out["last_token_logit_cosine"] = round(min(cosine(u, v) for u, v in logits), 6)
    return out
