"""The evaluation's outputs: score table (CSV), plots (PNG) and one self-contained HTML
report (plots embedded), beside the per-sample logs written by the run."""
from __future__ import annotations

import html
from pathlib import Path

from medwb.paths import write_text_atomic
from medwb.plots import png_base64

COLUMNS = ["variant", "task", "metric", "n", "answered", "score", "ci_low", "ci_high", "diff", "diff_low",
           "diff_high", "kept", "parse_failure_rate", "complete"]


def _percent(scores):
    """Task metrics shown x 100 (as PromptCBLUE reports them); overall already is."""
    shown = scores.copy()
    tasks = shown.task != "overall"
    for col in ("score", "ci_low", "ci_high", "diff", "diff_low", "diff_high"):
        if col in shown:
            shown.loc[tasks, col] = shown.loc[tasks, col] * 100
    return shown


def table(scores):
    """Variants x tasks: 'score [low, high]' (x 100), for notebooks and the report."""
    shown = _percent(scores)

    def cell(r):
        if r.get("score") != r.get("score") or r.get("score") is None:  # NaN: incomplete
            return "incomplete"
        return f"{r['score']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
    shown["cell"] = shown.apply(cell, axis=1)
    order = list(dict.fromkeys(shown.task))
    out = shown.pivot(index="variant", columns="task", values="cell")[order]
    return out.reindex(list(dict.fromkeys(shown.variant)))


def guard_table(scores, verdicts: dict):
    """Per variant: overall, its difference to FP32, the weakest task's kept share, verdict."""
    import pandas as pd
    shown = _percent(scores)
    rows = []
    for variant in dict.fromkeys(shown.variant):
        mine = shown[shown.variant == variant]
        overall = mine[mine.task == "overall"].iloc[0]
        tasks = mine[mine.task != "overall"]
        worst = tasks.loc[tasks.kept.idxmin()] if "kept" in tasks and tasks.kept.notna().any() else None
        rows.append({"variant": variant, "overall": _fmt(overall.get("score")),
                     "vs FP32": _fmt_diff(overall), "lowest kept": "" if worst is None else
                     f"{worst.kept:.1%} ({worst.task})",
                     "parse failures": _fmt(100 * overall.get("parse_failure_rate"), "%"),
                     "verdict": verdicts.get(variant, "")})
    return pd.DataFrame(rows).set_index("variant")


def _fmt(x, unit: str = "") -> str:
    return "" if x is None or x != x else f"{x:.1f}{unit}"


def _fmt_diff(r) -> str:
    d = r.get("diff")
    if d is None or d != d:
        return ""
    return f"{d:+.1f} [{r['diff_low']:+.1f}, {r['diff_high']:+.1f}]"


def plot(scores, path: Path | None = None):
    """Per task, each variant's score with its 95% interval; returns the figure."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    shown = _percent(scores[scores.task != "overall"])
    tasks = list(dict.fromkeys(shown.task))
    variants = list(dict.fromkeys(shown.variant))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tasks)), 4))
    width = 0.8 / max(1, len(variants))
    for k, v in enumerate(variants):
        mine = shown[shown.variant == v].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) + k * width
        y = mine.score.to_numpy(dtype=float)
        # The guard's intervals hold their score; the clip keeps float rounding out of matplotlib's check.
        err = np.clip(np.vstack([y - mine.ci_low.to_numpy(dtype=float), mine.ci_high.to_numpy(dtype=float) - y]),
                      0, None)
        ax.bar(x, y, width, yerr=err, capsize=2, label=v)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(variants) - 1) / 2)
    ax.set_xticklabels(tasks, rotation=20, ha="right")
    ax.set_ylabel("main metric x 100 (95% bootstrap interval)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=min(4, len(variants)), loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def write(out_dir: Path, scores, verdicts: dict, errors: dict | None = None, meta: dict | None = None) -> dict:
    """scores.csv, scores.png and report.html in ``out_dir``; returns their paths."""
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = [c for c in COLUMNS if c in scores]
    write_text_atomic(out_dir / "scores.csv", scores[cols].to_csv(index=False))
    fig = plot(scores, out_dir / "scores.png")
    image = png_base64(fig, dpi=110)
    plt.close(fig)
    meta = meta or {}
    errors = errors or {}
    parts = [
        "<html><head><meta charset='utf-8'><title>MedWB evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>",
        "<h1>Accuracy on medical tasks (PromptCBLUE format)</h1>",
        "<p>" + html.escape(", ".join(f"{k}: {v}" for k, v in meta.items())) + "</p>",
        "<p>Scores are each task's official main metric x 100 (micro-F1, macro-F1, weighted-F1 or "
        "ROUGE-L F), greedy decoding, with 95% bootstrap intervals; differences are paired against "
        "FP32 on the same resampled samples. Overall = mean of the task metrics.</p>",
        "<h2>Guard</h2>", guard_table(scores, verdicts).to_html(escape=True),
        "<h2>Per task</h2>", table(scores).to_html(escape=True),
        f"<img src='data:image/png;base64,{image}'/>",
    ]
    if errors:
        parts += ["<h2>Errors</h2><ul>"] + [f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in errors.items()]
        parts.append("</ul>")
    parts.append("</body></html>")
    write_text_atomic(out_dir / "report.html", "\n".join(parts))
    return {"csv": out_dir / "scores.csv", "png": out_dir / "scores.png", "html": out_dir / "report.html"}


def summary(scores, verdicts: dict) -> str:
    lines = ["evaluation (overall = mean of task metrics x 100; 95% bootstrap interval):"]
    for variant, text in verdicts.items():
        o = scores[(scores.variant == variant) & (scores.task == "overall")]
        shown = "incomplete" if o.empty or o.score.isna().all() else \
            f"{o.score.iloc[0]:.1f} [{o.ci_low.iloc[0]:.1f}, {o.ci_high.iloc[0]:.1f}]"
        lines.append(f"  {variant}: {shown}; {text}")
    return "\n".join(lines)
