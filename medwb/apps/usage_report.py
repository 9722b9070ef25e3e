"""The doctors' usage report (notebook 07, ``medwb feedback DB --report``): per workflow and
model, per day or week, opens, generations, usage rate, adoption rate, like rate, error
reports by category and latency percentiles (``medwb.quality.usage``), with plots, CSV files
and one self-contained HTML page. A simulated database is labelled SIMULATED everywhere."""
from __future__ import annotations

import html
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import write_text_atomic
from medwb.plots import png_base64
from medwb.quality import usage

WORKFLOW_NAMES = {"differential_diagnosis": "鉴别诊断 differential diagnosis",
                  "discharge_record": "出院记录 discharge record"}


def open_database(path, parameter: str = "database") -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MedwbError(f"{parameter} '{p}' does not exist: give the feedback_db of notebooks 04/05 (by default "
                         "feedback.sqlite in their run folder) or a database written by `medwb feedback simulate`")
    try:
        return usage.load(p)
    except Exception as e:  # noqa: BLE001  (sqlite or pandas: the file is not a MedWB store)
        raise MedwbError(f"{parameter} '{p}' is not a MedWB feedback database ({type(e).__name__}: {e})") from e


def build(path, period: str = "week", origin: str | None = None) -> dict:
    """The report's tables: per workflow, per workflow and model, error categories."""
    if period not in usage.PERIODS:  # before the database is opened
        raise MedwbError(f"period {period!r}: use one of {', '.join(usage.PERIODS)}")
    tables = open_database(path)
    simulated = tables["meta"].get("simulated") == "1" or (tables["rounds"].origin == "simulated").any()
    return {"database": str(Path(path).expanduser()), "period": period, "origin": origin or "all",
            "simulated": bool(simulated),
            "by_workflow": usage.usage_table(tables, period, origin=origin),
            "by_model": usage.usage_table(tables, period, by_model=True, origin=origin),
            "errors": usage.error_categories(tables, period, origin=origin)}


def plots(report: dict) -> dict:
    """name -> matplotlib figure: rates over time per workflow, latency per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = {}
    wf = report["by_workflow"]
    if wf.empty:
        return figs
    label = " (SIMULATED)" if report["simulated"] else ""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, col in zip(axes, ("usage_rate", "adoption_rate", "like_rate")):
        for name, rows in wf.groupby("workflow"):
            ax.plot(rows.period.astype(str), rows[col].astype(float), marker="o", label=name)
        ax.set_title(col.replace("_", " ") + label)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=45)
    axes[0].legend(fontsize=8)
    figs["rates"] = fig
    bm = report["by_model"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    lat = bm.groupby(["workflow", "model_label"])[["ttft_p50_ms", "ttft_p90_ms", "total_p50_ms", "total_p90_ms"]].median()
    lat.plot.barh(ax=ax)
    ax.set_xlabel("ms (median over periods)")
    ax.set_title("latency per model" + label)
    figs["latency"] = fig
    return figs


def write(report: dict, out_dir) -> dict:
    """usage_by_workflow.csv, usage_by_model.csv, usage_errors.csv and usage_report.html."""
    import matplotlib.pyplot as plt
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("by_workflow", "by_model", "errors"):
        paths[name] = out / f"usage_{name}.csv"
        write_text_atomic(paths[name], report[name].to_csv(index=name == "errors"))
    figs = plots(report)
    banner = ("<p style='background:#ffe0e0;padding:.6em;border-left:4px solid #c00000'><b>SIMULATED DATA</b>: "
              "written by <code>medwb feedback simulate</code> (real drafts from the demo model, simulated doctors). "
              "These figures describe the simulation, not a hospital.</p>") if report["simulated"] else ""
    parts = ["<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>MedWB usage report"
             + (" (SIMULATED)" if report["simulated"] else "") + "</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1300px} table{border-collapse:collapse;"
             "font-size:12px} td,th{border:1px solid #ccc;padding:3px 6px} th{background:#f3f3f3}</style></head><body>",
             "<h1>MedWB: do doctors use the apps?" + (" (SIMULATED)" if report["simulated"] else "") + "</h1>", banner,
             f"<p>Database {html.escape(report['database'])}; per {report['period']}; origin: "
             f"{html.escape(report['origin'])}.</p>",
             "<p>usage rate = records for which a draft was back-filled / records opened; adoption rate = finished "
             "drafts back-filled / finished drafts; like rate = likes / votes (latest vote per draft); regeneration rate = "
             "rounds that regenerate the open record (edited, or saved changed) / rounds (a new patient is a new "
             "record, not a regeneration).</p>",
             *[f"<h2>{html.escape(n)}</h2><img src='data:image/png;base64,{png_base64(f)}'>" for n, f in figs.items()],
             "<h2>Per workflow</h2>", report["by_workflow"].to_html(index=False, na_rep="–"),
             "<h2>Per workflow and model</h2>", report["by_model"].to_html(index=False, na_rep="–"),
             "<h2>Error reports by category</h2>", report["errors"].to_html(na_rep="–"),
             "</body></html>"]
    for f in figs.values():
        plt.close(f)
    paths["html"] = out / "usage_report.html"
    write_text_atomic(paths["html"], "\n".join(parts))
    return paths
