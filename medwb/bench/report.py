"""Plots, a ranked recommendation and a self-contained HTML report from benchmark records
(``medwb.bench.run``), for notebook 03."""
from __future__ import annotations

from pathlib import Path

from medwb.errors import MedwbError, check_count
from medwb.paths import write_text_atomic
from medwb.plots import png_base64


def run_info(records: list[dict]) -> dict:
    return next((r for r in records if r.get("record_type") == "run"), {})


def frame(records: list[dict]):
    from medwb.bench.run import table
    return table(records)


# ---------------------------------------------------------------- plots

def decision_plot(ranked):
    """Speed against fidelity to FP32, one point per variant: next-token ms (x), mean KL
    divergence from FP32 (y, log), the marker's area the peak memory, filled when the
    variant is accurate enough; None without fidelity figures."""
    import matplotlib.pyplot as plt
    import numpy as np
    if ranked is None or "kld" not in ranked or ranked["kld"].isna().all():
        return None
    df = ranked[ranked["kld"].notna()]
    fig, ax = plt.subplots(figsize=(9, 5))
    size = 30 + 300 * df["peak_rss_MB"] / max(1.0, float(df["peak_rss_MB"].max()))
    ok = df["accurate"].astype(bool)
    ax.scatter(df["tpot_ms"][ok], np.maximum(df["kld"][ok], 1e-6), s=size[ok], label="accurate enough")
    ax.scatter(df["tpot_ms"][~ok], np.maximum(df["kld"][~ok], 1e-6), s=size[~ok], facecolors="none",
               edgecolors="tab:red", label="not (see evidence)")
    for _, r in df.iterrows():
        ax.annotate(r["variant"], (r["tpot_ms"], max(r["kld"], 1e-6)), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("next-token latency (ms/token, lower is better)")
    ax.set_ylabel("mean KL divergence from FP32 (lower is closer)")
    ax.set_title("speed, fidelity and memory (marker area: peak RSS)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plots(records: list[dict]) -> dict:
    """name -> matplotlib Figure: latency, memory and size, quality vs speed, % of limit."""
    import matplotlib.pyplot as plt

    df = frame(records)
    if "server" in df:  # a cluster run: each variant once per server kind
        df["variant"] = df["variant"] + " @ " + df["server"]
    ok = df[df["error"] == ""]
    figs = {}
    if ok.empty:
        return figs
    pivot_ttft = ok.pivot_table(index="variant", columns="tokens", values="ttft_ms", sort=False)
    pivot_tpot = ok.pivot_table(index="variant", columns="tokens", values="tpot_ms", sort=False)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(pivot_ttft) + 2))
    pivot_ttft.plot.barh(ax=axes[0], title="first-token latency (ms, lower is better)")
    pivot_tpot.plot.barh(ax=axes[1], title="next-token latency (ms/token, lower is better)")
    axes[1].set_yticklabels([])
    axes[1].set_ylabel("")
    fig.tight_layout()
    figs["latency"] = fig

    per_variant = ok.groupby("variant", sort=False).agg(peak_rss_MB=("peak_rss_MB", "max"), size_MB=("size_MB", "max"))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(per_variant) + 2))
    per_variant.plot.barh(ax=ax, title="peak RSS of the process and size on disk (MB)")
    fig.tight_layout()
    figs["memory"] = fig

    first_pair = ok["tokens"].iloc[0]
    at = ok[ok["tokens"] == first_pair]
    quality_col = "rougeL_vs_fp32" if at["rougeL_vs_fp32"].notna().any() else None
    if quality_col:
        fig, ax = plt.subplots(figsize=(8, 5))
        ax.scatter(at["tpot_ms"], at[quality_col])
        for _, row in at.iterrows():
            ax.annotate(row["variant"], (row["tpot_ms"], row[quality_col]), fontsize=8,
                        xytext=(4, 2), textcoords="offset points")
        ax.set_xlabel(f"next-token latency at {first_pair} tokens (ms/token)")
        ax.set_ylabel("ROUGE-L vs FP32 output (held-out cases)")
        ax.set_title("quality vs speed (up and left is better)")
        fig.tight_layout()
        figs["quality_vs_speed"] = fig

    pct = ok.pivot_table(index="variant", columns="tokens", values="pct_of_limit", sort=False)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(pct) + 2))
    pct.plot.barh(ax=ax, title="next-token latency as % of its binding floor (bandwidth or compute: the larger; "
                               "higher: closer)")
    ax.axvline(100, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    figs["pct_of_limit"] = fig
    if "compute_floor_ms" in ok:
        figs["floors"] = floors_figure(ok[ok["tokens"] == first_pair])
    return figs


def floors_figure(rows):
    """The roofline per variant at one token pair: the measured next-token time beside the
    bandwidth floor and the compute floor (medwb.bench.roofline); the larger floor binds."""
    import matplotlib.pyplot as plt
    data = rows.set_index("variant")[["tpot_ms", "floor_ms", "compute_floor_ms"]].rename(
        columns={"tpot_ms": "measured", "floor_ms": "bandwidth floor", "compute_floor_ms": "compute floor"})
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(data) + 2))
    data.plot.barh(ax=ax, color=["#4c72b0", "#c0c0c0", "#dd8452"],
                   title=f"next-token time and its two floors at {rows['tokens'].iloc[0]} tokens (ms/token)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- recommendation

def recommend(records: list[dict], latency_target_ms: float, ram_budget_gb: float, side_by_side: int = 3,
              tokens: str | None = None, evaluation: dict | None = None, fidelity: dict | None = None):
    """Variants ranked for a next-token latency target and a RAM budget.

    A variant qualifies when its next-token latency meets the target and ``side_by_side``
    copies fit in the budget (the diagnosis workflow runs three models at once). When they
    decode at the same time they share the cores and the memory bandwidth: the table gives
    the latency then as *measured* (``medwb bench --concurrent N`` with N = ``side_by_side``:
    the slowest copy) or, when it was not measured, as an *estimate*: at least
    ``side_by_side`` x the decode floor (``side_by_side_basis`` says which).

    Quality is a gate, not a score to maximise: FP32 always "wins" a similarity-to-FP32
    axis, and small differences in task scores are noise. Two kinds of evidence decide it
    (``evidence`` says which one did, per variant):
    - ``evaluation`` (``medwb.eval.run.latest_summary``): the task scores' non-inferiority
      decision against FP32 (keeps, loses, or not enough samples to decide);
    - ``fidelity`` (``medwb.eval.fidelity``): next-token distributions against FP32 on the
      same token ids (KL divergence, same top token) against configs/decision.yaml's bar.
    A variant is accurate enough when neither says it loses (task scores lose, fidelity
    fails) and at least one says it keeps (non-inferior, or fidelity within the bar). With
    neither, the proxy is ROUGE-L vs FP32 >= 0.9 on the few benchmark cases.
    Ranked: qualifies, accurate enough, then fastest next token.
    """
    import pandas as pd
    df = frame(records)
    df = df[df["error"] == ""]
    if df.empty:
        return pd.DataFrame()
    tokens = tokens or df["tokens"].iloc[-1]
    df = df[df["tokens"] == tokens].copy()
    budget_mb = ram_budget_gb * 1024
    df["fit_in_budget"] = (budget_mb // df["peak_rss_MB"]).astype(int)
    for col in ("side_by_side_n", "tpot_side_by_side_ms", "exact_vs_fp32", "first_diff"):  # absent from hand-built frames
        if col not in df:
            df[col] = float("nan")
    measured = (df["side_by_side_n"] == side_by_side) & df["tpot_side_by_side_ms"].notna()
    df["tpot_side_by_side"] = [round(m, 2) if ok else (round(max(t, side_by_side * f), 2) if f == f else None)
                               for ok, m, t, f in zip(measured, df["tpot_side_by_side_ms"], df["tpot_ms"],
                                                      df["floor_ms"])]
    df["side_by_side_basis"] = ["measured" if ok else "estimated" for ok in measured]
    df["meets_latency"] = df["tpot_ms"] <= latency_target_ms
    df["fits_side_by_side"] = df["fit_in_budget"] >= side_by_side
    df["qualifies"] = df["meets_latency"] & df["fits_side_by_side"]
    evaluated = (evaluation or {}).get("variants", {})
    measured = (fidelity or {}).get("variants", {})
    df["task_score"] = [evaluated.get(v, {}).get("overall") for v in df["variant"]]
    df["task_decision"] = [_task_decision(evaluated.get(v)) for v in df["variant"]]
    df["fidelity"] = [(measured.get(v) or {}).get("verdict") for v in df["variant"]]
    df["kld"] = [(measured.get(v) or {}).get("kld_mean") for v in df["variant"]]
    df["same_top"] = [(measured.get(v) or {}).get("same_top") for v in df["variant"]]
    if evaluated or measured:
        judged = [_accuracy(t, f) for t, f in zip(df["task_decision"], df["fidelity"])]
        df["accurate"] = [a for a, _ in judged]
        df["evidence"] = [e for _, e in judged]
        df["quality_basis"] = " + ".join(b for b, given in (("task scores", evaluated), ("fidelity", measured))
                                         if given)
    else:
        df["accurate"] = df["rougeL_vs_fp32"].fillna(0) >= 0.9
        df["quality_basis"] = "ROUGE-L vs FP32 (proxy)"
    df = df.sort_values(["qualifies", "accurate", "tpot_ms"], ascending=[False, False, True])
    df.insert(0, "rank", range(1, len(df) + 1))
    if "evidence" not in df:
        df["evidence"] = ["ROUGE-L vs FP32 >= 0.9" if a else "ROUGE-L vs FP32 < 0.9" for a in df["accurate"]]
    cols = ["rank"] + (["server"] if "server" in df else []) + [
        "variant", "qualifies", "accurate", "evidence", "tpot_ms", "tpot_side_by_side", "side_by_side_basis",
        "ttft_ms", "peak_rss_MB", "fit_in_budget", "task_score", "task_decision", "fidelity", "kld", "same_top",
        "exact_vs_fp32", "first_diff", "rougeL_vs_fp32", "dx_top3", "dc_complete", "kernels", "quality_basis"]
    return df[cols].reset_index(drop=True)


def _task_decision(summary: dict | None) -> str | None:
    """The evaluation's decision for one variant (an older summary without one: its
    ``keeps_accuracy``, a "no" then read as undecided, since that guard was a point ratio)."""
    if not summary:
        return None
    if "decision" in summary:
        return summary["decision"]
    return "keeps" if summary.get("keeps_accuracy") else "undecided"


def _accuracy(task: str | None, fidelity: str | None) -> tuple[bool, str]:
    """(accurate enough, the evidence in words) from the two decisions."""
    said = {None: "not evaluated", "keeps": "keep FP32's accuracy", "loses": "lose accuracy",
            "undecided": "not enough samples to decide", "reference": "the reference"}
    task_words = f"task scores: {said.get(task, task)}"
    fid_words = {None: "fidelity: not measured", "passes": "fidelity within the bar", "fails": "fidelity fails the bar",
                 "reference": "fidelity: the reference"}.get(fidelity, f"fidelity: {fidelity}")
    if task == "reference" or fidelity == "reference":
        return True, "the FP32 reference"
    if task == "loses" or fidelity == "fails":
        return False, f"{task_words}; {fid_words}"
    if task == "keeps" or fidelity == "passes":
        return True, f"{task_words}; {fid_words}"
    return False, f"not enough evidence ({task_words}; {fid_words})"


def _entry(variant_label: str):
    """The registry entry of a variant's backend."""
    from medwb.backends import registry, variants
    return registry.get(variants.parse_variants(variant_label)[0]["backend"])


def _is_peer(variant_label: str) -> bool:
    return _entry(variant_label).peer


def _caveat(variant_label: str) -> str:
    """What a deployer must know about the variant's library even where it runs (ipex-llm: archived)."""
    return _entry(variant_label).caveat


# An unmaintained library (no security fixes) is recommended only when it is faster than the
# best maintained variant by more than this: run-to-run decode noise on these 2-core VMs is
# ~5-10%, and a hospital server should not run unpatched code for less.
MAINTAINED_MARGIN = 0.10


def side_by_decode(row, n: int) -> str:
    if row["side_by_side_basis"] == "measured":
        return f"measured: {row['tpot_side_by_side']} ms/token for the slowest of {n} decoding at once"
    return (f"estimated >= {row['tpot_side_by_side']} ms when all {n} decode at once; measure it with "
            f"`medwb bench --concurrent {n}`")


def check_targets(latency_target_ms, ram_budget_gb, side_by_side) -> None:
    """Notebook 03 checks its recommendation parameters before the benchmark runs."""
    for name, value in (("latency_target_ms", latency_target_ms), ("ram_budget_gb", ram_budget_gb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise MedwbError(f"{name} must be a positive number, got {value!r}")
    check_count("side_by_side", side_by_side, meaning="models running at once")


def recommendation_text(ranked, latency_target_ms: float, ram_budget_gb: float, side_by_side: int = 3,
                        evaluation: dict | None = None, fidelity: dict | None = None) -> str:
    if ranked is None or len(ranked) == 0:
        return "No variant produced measurements; see the errors in the records."
    fastest = ranked.sort_values("tpot_ms").iloc[0]
    on = f" on {fastest['server']}" if "server" in fastest else ""
    lines = [f"Fastest next token here: {fastest['variant']}{on} ({fastest['tpot_ms']:.2f} ms/token)."]
    good = ranked[ranked["qualifies"] & ranked["accurate"]]
    if len(good):
        best = good.iloc[0]
        if _caveat(best["variant"]):
            kept = [r for _, r in good.iterrows() if not _caveat(r["variant"])]
            if kept and kept[0]["tpot_ms"] <= best["tpot_ms"] * (1 + MAINTAINED_MARGIN):
                lines.append(f"Passed over: {best['variant']} ({best['tpot_ms']:.2f} ms/token) is within "
                             f"{MAINTAINED_MARGIN:.0%} of {kept[0]['variant']}, and {_caveat(best['variant'])}.")
                best = kept[0]
            else:
                lines.append(f"Note: {_caveat(best['variant'])}; it is recommended because it is more than "
                             f"{MAINTAINED_MARGIN:.0%} faster than any maintained variant that qualifies.")
        q = f", task score {best['task_score']:.1f}" if best["task_score"] == best["task_score"] and \
            best["task_score"] is not None else ""
        peer = " (the peer users would pick instead, not one of the two routes)" if _is_peer(best["variant"]) else ""
        where = f" on {best['server']}" if "server" in best else ""
        lines.append(f"For a next-token target of {latency_target_ms:g} ms and {ram_budget_gb:g} GB of RAM with "
                     f"{side_by_side} models side by side, deploy {best['variant']}{peer}{where}: "
                     f"{best['tpot_ms']:.2f} ms/token "
                     f"alone ({side_by_decode(best, side_by_side)}), {best['peak_rss_MB']:.0f} MB each, "
                     f"{int(best['fit_in_budget'])} fit{q}; accuracy: {best.get('evidence', best.get('quality_basis', ''))}.")
        faster = ranked[ranked["qualifies"] & ~ranked["accurate"] & (ranked["tpot_ms"] < best["tpot_ms"])]
        if len(faster) and "evidence" in ranked:  # say why each faster variant was passed over (FP32 included: why it wins)
            lines.append("Faster but not chosen: " + "; ".join(
                f"{r['variant']} ({r['tpot_ms']:.2f} ms/token): {r['evidence']}" for _, r in faster.iterrows()) + ".")
    elif len(ranked[ranked["qualifies"]]):
        lines.append("Variants meet the latency and memory targets, but none keeps the accuracy "
                     "(see the quality basis): do not deploy a low-bit variant on speed alone.")
    else:
        lines.append(f"No variant meets {latency_target_ms:g} ms/token with {side_by_side} copies in "
                     f"{ram_budget_gb:g} GB: relax the target, add RAM, or use a smaller model.")
    if evaluation:
        lines.append(f"Task scores: the evaluation from {evaluation.get('source') or evaluation['run']} "
                     f"({evaluation['created']}; notebook 06), decided by non-inferiority with a "
                     f"{evaluation.get('margin', 0.05):.0%} margin; a variant not evaluated there has no task evidence.")
    if fidelity:
        lines.append(f"Fidelity: next-token distributions against FP32 on {fidelity.get('windows')} x "
                     f"{fidelity.get('scored_per_window')} tokens of {fidelity.get('texts')}, measured in "
                     f"{fidelity.get('source', 'this run')} (bars: configs/decision.yaml).")
    lines.append("Generation: exact_vs_fp32, first_diff (the median token where greedy output first leaves "
                 "FP32's) and rougeL_vs_fp32 compare each variant's text with FP32's on the held-out clinical "
                 "prompts, the variants without logits too; they describe, they do not decide.")
    if not evaluation and not fidelity:
        lines.append("Quality: no task evaluation or fidelity measurement of this model yet, so ROUGE-L against "
                     "FP32 on a few cases stands in for it (it cannot say whether FP32 itself is right): run "
                     "notebook 06 (`medwb eval`) and `medwb fidelity`, then this cell again.")
    return " ".join(lines)


def servers(records: list[dict], latency_target_ms: float, ram_budget_gb: float, side_by_side: int = 3,
            tokens: str | None = None, evaluation: dict | None = None, fidelity: dict | None = None):
    """A cluster run's server kinds side by side: each one's CPU, cores, bandwidth, fastest
    variant and its own recommendation (``recommend`` on that kind's records alone). Empty
    for a run on one machine."""
    import pandas as pd
    info = (run_info(records).get("cluster") or {}).get("servers", {})
    rows = []
    for server in sorted({r["server"] for r in records if r.get("server")}):
        own = [r for r in records if r.get("server") == server]
        ranked = recommend(own, latency_target_ms, ram_budget_gb, side_by_side, tokens, evaluation, fidelity)
        s = info.get(server, {})
        row = {"server": server, "cpu": (s.get("cpu") or {}).get("model"), "cores": s.get("cpus"),
               "nodes": len(s.get("nodes", [])), "read_GB_s": (s.get("bandwidth") or {}).get("read_gb_s"),
               "measured": sum(1 for r in own if not r.get("error")), "errors": sum(1 for r in own if r.get("error"))}
        if len(ranked):
            fastest = ranked.sort_values("tpot_ms").iloc[0]
            good = ranked[ranked["qualifies"] & ranked["accurate"]]
            row.update(fastest=fastest["variant"], fastest_tpot_ms=fastest["tpot_ms"],
                       deploy=good.iloc[0]["variant"] if len(good) else None,
                       deploy_tpot_ms=good.iloc[0]["tpot_ms"] if len(good) else None,
                       deploy_peak_rss_MB=good.iloc[0]["peak_rss_MB"] if len(good) else None)
        rows.append(row)
    return pd.DataFrame(rows)


def servers_text(table, latency_target_ms: float, ram_budget_gb: float, side_by_side: int = 3) -> str:
    """One sentence per server kind: what to deploy there, or why nothing."""
    if table is None or len(table) == 0:
        return "This run measured one machine (no --cluster): no servers to compare."
    parts = []
    for _, r in table.iterrows():
        head = f"{r['server']} ({r['cpu']}, {r['cores']} cores, {r['read_GB_s']} GB/s read)"
        if r.get("deploy") and r["deploy"] == r["deploy"]:
            parts.append(f"{head}: deploy {r['deploy']}, {r['deploy_tpot_ms']:.2f} ms/token")
        elif r.get("fastest") and r["fastest"] == r["fastest"]:
            parts.append(f"{head}: nothing meets {latency_target_ms:g} ms/token with {side_by_side} side by side "
                         f"in {ram_budget_gb:g} GB and keeps the accuracy (fastest: {r['fastest']}, "
                         f"{r['fastest_tpot_ms']:.2f} ms/token)")
        else:
            parts.append(f"{head}: no measurement ({r['errors']} error records)")
    return "Per server kind: " + "; ".join(parts) + "."


# ---------------------------------------------------------------- against the peer

def peer_comparison(records: list[dict]):
    """Per token pair and weight bits: the fastest variant of the two routes beside the
    fastest peer variant (llama.cpp) at the same bits, measured in this run, and how many
    times the floor each is. ``peer_over_route`` > 1: the route is faster."""
    import pandas as pd
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("record_type") == "variant" and not r.get("error") and r.get("tpot_ms") and r.get("weight_bits"):
            groups.setdefault((r.get("server") or "", r["input_tokens"], r["output_tokens"], r["weight_bits"]),
                              []).append(r)

    def x_floor(r):  # times its binding floor (the bandwidth floor where no compute floor was measured)
        floor = r.get("limit_ms") or r.get("decode_floor_ms")
        return round(r["tpot_ms"] / floor, 2) if floor else None
    out = []
    for (server, n_in, n_out, bits), same in sorted(groups.items()):
        route = min((r for r in same if not r.get("peer")), key=lambda r: r["tpot_ms"], default=None)
        peer = min((r for r in same if r.get("peer")), key=lambda r: r["tpot_ms"], default=None)
        if route and peer:
            out.append({**({"server": server} if server else {}),
                        "tokens": f"{n_in}-{n_out}", "bits": bits, "route_variant": route["variant"],
                        "route_tpot_ms": route["tpot_ms"], "route_x_floor": x_floor(route),
                        "peer_variant": peer["variant"], "peer_tpot_ms": peer["tpot_ms"], "peer_x_floor": x_floor(peer),
                        "peer_over_route": round(peer["tpot_ms"] / route["tpot_ms"], 2)})
    return pd.DataFrame(out)


def peer_text(peers) -> str:
    """The comparison in one sentence per weight width, at the run's first token pair."""
    if peers is None or len(peers) == 0:
        return ("No llama.cpp variant was measured beside the routes at the same bits in this run, so "
                "there is no comparison with what users would pick instead.")
    first = peers[peers["tokens"] == peers["tokens"].iloc[0]]
    parts = []
    for _, r in first.iterrows():
        ratio = r["peer_over_route"]
        verdict = f"the route {ratio:.2f}x faster" if ratio >= 1 else f"llama.cpp {1 / ratio:.2f}x faster"
        on = f" on {r['server']}" if "server" in r else ""
        parts.append(f"{r['bits']}-bit{on}: {r['route_variant']} {r['route_tpot_ms']:.2f} ms/token vs "
                     f"{r['peer_variant']} {r['peer_tpot_ms']:.2f} ({verdict})")
    return f"Against llama.cpp at the same bits ({first['tokens'].iloc[0]} tokens, this run): " + "; ".join(parts) + "."


# ---------------------------------------------------------------- HTML

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MedWB comparison {{ created }}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1300px} table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right} th{background:#f3f3f3}
.note{background:#fff8e0;padding:.6em;border-left:4px solid #e0b000}</style></head><body>
<h1>MedWB: which route and precision to deploy</h1>
<p>Run {{ run_id }}, {{ created }}. CPU: {{ cpu }} (flags: {{ flags }}). Threads: {{ threads }}.
Memory bandwidth: {{ bw }}.</p>
<p>Model: <code>{{ model }}</code>{% if speed_only %} <b>(random weights of a real shape: speed only,
no quality)</b>{% endif %}. Protocol: each variant in a fresh process; prompt cut to the exact input
length; greedy; output length forced; one warm-up excluded; median of {{ trials }} trials.</p>
<h2>Recommendation</h2><p class="note">{{ recommendation }}</p>{{ ranked }}
{% if servers %}<h2>Servers side by side</h2><p>{{ servers_note }}</p>{{ servers }}{% endif %}
<h2>Against what users would pick instead</h2><p>{{ peer_note }}</p>{{ peers }}
<h2>All records</h2>{{ table }}
{% for name, img in images %}<h2>{{ name }}</h2><img src="data:image/png;base64,{{ img }}">{% endfor %}
</body></html>"""


def write_html(records: list[dict], run_dir, ranked, recommendation: str, figs: dict, by_server=None,
               servers_note: str = "") -> Path:
    """``<run_dir>/report.html`` (empty run_dir: the run folder the records came from):
    tables and plots inline, no external files or links. ``by_server`` (``servers``): a
    cluster run's server kinds side by side."""
    import jinja2
    info = run_info(records)
    run_dir = run_dir or info["run_dir"]
    cfg = info.get("config", {})
    peers = peer_comparison(records)
    html = jinja2.Template(_TEMPLATE, autoescape=True).render(
        run_id=Path(run_dir).name, created=info.get("created", ""),
        cpu=info.get("cpu", {}).get("model", "?") if not info.get("cluster") else
        f"a cluster of {len(info['cluster']['servers'])} server kind(s), first {info.get('cpu', {}).get('model', '?')}",
        flags=", ".join(info.get("cpu", {}).get("flags", [])),
        threads=cfg.get("threads") or ("every core of each node" if info.get("cluster") else "all cores"),
        bw="measured on each node, see Servers side by side" if info.get("cluster") else
        "read {read_gb_s} GB/s, copy {copy_gb_s} GB/s ({method})".format_map(
            {"read_gb_s": "?", "copy_gb_s": "?", "method": "?", **info.get("bandwidth", {})}),
        model=info.get("model", ""), speed_only=info.get("speed_only"),
        trials=cfg.get("trials"), recommendation=recommendation,
        ranked=jinja2.utils.markupsafe.Markup(ranked.to_html(index=False, na_rep="")),
        peer_note=peer_text(peers), peers=jinja2.utils.markupsafe.Markup(peers.to_html(index=False, na_rep="")),
        servers=jinja2.utils.markupsafe.Markup(by_server.to_html(index=False, na_rep=""))
        if by_server is not None and len(by_server) else "", servers_note=servers_note,
        table=jinja2.utils.markupsafe.Markup(frame(records).to_html(index=False, na_rep="")),
        images=[(name.replace("_", " "), png_base64(fig)) for name, fig in figs.items() if fig is not None])
    path = Path(run_dir) / "report.html"
    write_text_atomic(path, html)
    return path
