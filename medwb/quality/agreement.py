"""Agreement of a variant's greedy outputs with the FP32 reference's, on the same prompts:
exact match, the share of the reference's tokens reproduced before the first difference,
and (where both backends expose logits) the cosine of the last-token logits."""
from __future__ import annotations


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
    logits = [(u, v) for u, v in zip(result.get("last_logits", []), reference.get("last_logits", []))
              if u is not None and v is not None]
    if logits:
        out["last_token_logit_cosine"] = round(min(cosine(u, v) for u, v in logits), 6)
    return out
