"""Usage figures of the clinical apps, per model, from the feedback store's outputs and
doctor actions: like rate, adoption (back-fill) rate, copies, error reports, latency.

Votes: a doctor may change their mind, so each output counts its latest like/dislike.
Adoption: outputs back-filled at least once / outputs that completed.
"""
from __future__ import annotations


def per_model(outputs, actions):
    """One row per model label (pandas), from the ``outputs`` and ``actions`` tables."""
    import pandas as pd
    votes = actions[actions.action.isin(["like", "dislike"])].groupby("output_id").action.last()
    counts = actions.groupby(["output_id", "action"]).size().unstack(fill_value=0)
    rows = []
    for label, out in outputs.groupby("model_label", sort=False):
        ok = out[out.status == "ok"]
        ids = set(out.output_id)
        mine = votes[votes.index.isin(ids)]
        per = counts[counts.index.isin(ids)]

        def n(action):
            return int((per[action] > 0).sum()) if action in per else 0
        # Decode speed: the tokens after the first, over the time after the first.
        tok_s = ((ok.new_tokens - 1) / (ok.total_ms - ok.ttft_ms) * 1e3).where(ok.new_tokens > 1)
        rows.append({
            "model": label, "outputs": len(out), "ok": len(ok),
            "failed": int(out.status.isin(["error", "timeout"]).sum()),
            "likes": int((mine == "like").sum()), "dislikes": int((mine == "dislike").sum()),
            "like_rate": round((mine == "like").mean(), 3) if len(mine) else None,
            "backfilled": n("backfill"), "adoption_rate": round(n("backfill") / len(ok), 3) if len(ok) else None,
            "copied": n("copy"), "error_reports": int(per["report_error"].sum()) if "report_error" in per else 0,
            "median_ttft_ms": round(ok.ttft_ms.median(), 1) if len(ok) else None,
            "median_total_ms": round(ok.total_ms.median(), 1) if len(ok) else None,
            "median_tok_s": round(tok_s.median(), 1) if tok_s.notna().any() else None,
        })
    return pd.DataFrame(rows).set_index("model")
