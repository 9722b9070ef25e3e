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

        def n(action, per=per):
            return int((per[action] > 0).sum()) if action in per else 0
        # Decode speed: the tokens after the first, over the time after the first.
        tok_s = ((ok.new_tokens - 1) / (ok.total_ms - ok.ttft_ms) * 1e3).where(ok.new_tokens > 1)
        rows.append({
            "model": label, "outputs": len(out), "ok": len(ok),
            "failed": int(out.status.isin(["error", "timeout", "interrupted"]).sum()),
            "likes": int((mine == "like").sum()), "dislikes": int((mine == "dislike").sum()),
            "like_rate": round((mine == "like").mean(), 3) if len(mine) else None,
            "backfilled": n("backfill"), "adoption_rate": round(n("backfill") / len(ok), 3) if len(ok) else None,
            "copied": n("copy"), "error_reports": int(per["report_error"].sum()) if "report_error" in per else 0,
            "median_ttft_ms": round(ok.ttft_ms.median(), 1) if len(ok) else None,
            "median_total_ms": round(ok.total_ms.median(), 1) if len(ok) else None,
            "median_tok_s": round(tok_s.median(), 1) if tok_s.notna().any() else None,
        })
    return pd.DataFrame(rows).set_index("model")


# --------------------------------------------------------------------- the usage report
# What a hospital asks after a month: do doctors use the apps? Per workflow (and model) and
# per day or week, from the raw rows of the feedback store:
#   opens           open events (a doctor opened a record in the app)
#   records_opened  distinct records opened in the period
#   usage_rate      records opened in the period for which a draft was back-filled (at any
#                   time, by model: that model's draft) / records opened
#   generations     rounds started (each runs every model once)
#   regenerations   rounds that regenerate the open record's previous round (edited and
#                   generated again, or saved changed); a new patient is not one
#   regeneration_rate  regenerations / generations
#   adoption_rate   finished outputs back-filled at least once / finished outputs
#   like_rate       likes / votes, the latest vote per output
#   error_reports   error reports (and one column per category in ``error_categories``)
#   ttft / total    first-token and total time percentiles (p50, p90) of finished outputs
PERIODS = {"day": "D", "week": "W-SUN"}


def load(path) -> dict:
    """The store's tables as pandas DataFrames, read-only (works while an app writes)."""
    import sqlite3
    from pathlib import Path

    import pandas as pd
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        tables = {t: pd.read_sql_query(f"SELECT * FROM {t}", conn) for t in ("rounds", "outputs", "actions", "events")}
        tables["meta"] = dict(conn.execute("SELECT key, value FROM meta WHERE key != 'hash_key'").fetchall())
    for name, column in (("rounds", "created_at"), ("outputs", "started_at"), ("actions", "created_at"),
                         ("events", "created_at")):
        tables[name][column] = pd.to_datetime(tables[name][column], utc=True, format="ISO8601")
    return tables


def _period(times, period: str):
    if period not in PERIODS:
        from medwb.errors import MedwbError
        raise MedwbError(f"period {period!r}: use one of {', '.join(PERIODS)}")
    return times.dt.tz_convert(None).dt.to_period(PERIODS[period]).dt.start_time.dt.date


def usage_table(tables: dict, period: str = "week", by_model: bool = False, origin: str | None = None):
    """One row per workflow (and model) and period; the columns above."""
    import pandas as pd
    rounds, outputs, actions, events = (tables[t].copy() for t in ("rounds", "outputs", "actions", "events"))
    if origin:
        rounds, events = rounds[rounds.origin == origin], events[events.origin == origin]
    outputs = outputs.merge(rounds[["round_id", "workflow", "record_ref", "created_at"]], on="round_id")
    outputs["period"] = _period(outputs.created_at, period)
    actions = actions[actions.output_id.notna()].merge(
        outputs[["output_id", "workflow", "record_ref", "model_label"]], on="output_id")
    opens = events[events.event == "open"].copy()
    opens["period"] = _period(opens.created_at, period)
    rounds["period"] = _period(rounds.created_at, period)
    backfilled = actions[actions.action == "backfill"]
    votes = actions[actions.action.isin(["like", "dislike"])].sort_values("action_id").groupby("output_id").action.last()
    keys = ["workflow", "model_label"] if by_model else ["workflow"]
    rows = []
    for key, out in outputs.groupby(keys + ["period"], sort=True):
        key = dict(zip(keys + ["period"], key if isinstance(key, tuple) else (key,)))
        wf, when = key["workflow"], key["period"]
        opened = opens[(opens.workflow == wf) & (opens.period == when)]
        records = set(opened.record_ref.dropna())
        used_by = backfilled[backfilled.workflow == wf]
        if by_model:
            used_by = used_by[used_by.model_label == key["model_label"]]
        ok = out[out.status == "ok"]
        mine = votes[votes.index.isin(set(out.output_id))]
        reports = actions[actions.output_id.isin(set(out.output_id)) & (actions.action == "report_error")]
        row = {**key, "opens": len(opened), "records_opened": len(records),
               "records_used": len(records & set(used_by.record_ref.dropna())),
               "generations": int(((rounds.workflow == wf) & (rounds.period == when)).sum()),
               "regenerations": int(((rounds.workflow == wf) & (rounds.period == when)
                                     & rounds.parent_round_id.notna()).sum()),
               "outputs": len(out), "ok": len(ok),
               "adopted": int(ok.output_id.isin(set(backfilled.output_id)).sum()),
               "likes": int((mine == "like").sum()), "dislikes": int((mine == "dislike").sum()),
               "error_reports": len(reports)}
        row["usage_rate"] = round(row["records_used"] / row["records_opened"], 3) if row["records_opened"] else None
        row["adoption_rate"] = round(row["adopted"] / row["ok"], 3) if row["ok"] else None
        row["regeneration_rate"] = round(row["regenerations"] / row["generations"], 3) if row["generations"] else None
        votes_n = row["likes"] + row["dislikes"]
        row["like_rate"] = round(row["likes"] / votes_n, 3) if votes_n else None
        for col in ("ttft_ms", "total_ms"):
            for q in (50, 90):
                row[f"{col.removesuffix('_ms')}_p{q}_ms"] = round(float(ok[col].quantile(q / 100)), 1) \
                    if ok[col].notna().any() else None
        rows.append(row)
    return pd.DataFrame(rows)


def error_categories(tables: dict, period: str = "week", origin: str | None = None):
    """Error reports per workflow, period and category."""
    rounds, actions = tables["rounds"], tables["actions"]
    if origin:
        rounds = rounds[rounds.origin == origin]
    reports = actions[actions.action == "report_error"].merge(rounds[["round_id", "workflow"]], on="round_id")
    reports = reports.assign(period=_period(reports.created_at, period))
    return reports.groupby(["workflow", "period", "category"]).size().unstack(fill_value=0)
