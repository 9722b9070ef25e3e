"""Which knobs matter: each tuned variant against its default, measured in the same run.

A tuning run is an ordinary ``medwb bench`` run whose matrix lists a variant at its
defaults (``openvino-genai:int4/bf16``) and the same variant with one knob changed
(``openvino-genai:int4/bf16[int4_sym=true]``, see medwb.backends.knobs), as
``configs/tune-*.yaml`` do, best with ``rounds`` > 1 (the matrix measured again in turn).
Only trials of one run are compared: on a shared 2-core VM the same variant varies more
between runs minutes apart than most knobs do, and within a run its trials vary by 10-30%.
So a knob counts as faster or slower only when its trials and its default's differ beyond
chance (a two-sided Mann-Whitney U test over every trial of every round, p < ALPHA) and by
more than MIN_EFFECT; otherwise the run cannot tell, and says so.
"""
from __future__ import annotations

import math
import statistics

ALPHA = 0.05
MIN_EFFECT = 0.03  # a difference under 3% is not a reason to change a default


def knob_table():
    """Every knob of every backend: kind, default and why (notebook 03's "which knobs")."""
    import pandas as pd

    from medwb.backends import knobs, registry
    rows = []
    for name in registry.names():
        entry = registry.get(name)
        for knob_name, k in knobs.declared(entry).items():
            rows.append({"backend": name, "knob": knob_name, "acts on": k.kind,
                         "values": ", ".join(map(knobs._text, k.values)) or "a positive integer",
                         "default": "library's own" if k.default is None else knobs._text(k.default),
                         "why": k.why or "", "what": k.doc})
    return pd.DataFrame(rows)


def _x_floor(tpot, floor):
    return round(tpot / floor, 2) if tpot and floor else None


def _trials(rs: list[dict]) -> list[float]:
    return [t for r in rs for t in (r.get("tpot_ms_trials") or [r["tpot_ms"]])]


def knob_effects(records: list[dict]):
    """One row per tuned variant and token pair against its default (same base variant, no
    knobs, same run): the median next-token latency of all their trials (every round),
    ``speedup`` = default / tuned (> 1: the knob helps), the test's p-value, both as
    multiples of their floors, and what changed in size and quality."""
    import pandas as pd

    from medwb.backends import knobs
    ok = [r for r in records if r.get("record_type") == "variant" and not r.get("error") and r.get("tpot_ms")]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        # A cluster run measured each variant on every server kind: a knob is read against its
        # default on the same kind only.
        key = (r.get("server") or "", r.get("base_variant"), r["input_tokens"], r["output_tokens"],
               knobs.written(r.get("knobs") or {}))
        groups.setdefault(key, []).append(r)
    rows = []
    for (server, base, n_in, n_out, setting), tuned in groups.items():
        default = groups.get((server, base, n_in, n_out, ""))
        if not setting or not default:
            continue
        t, d = _trials(tuned), _trials(default)
        mt, md = statistics.median(t), statistics.median(d)
        # scipy comes with scikit-learn (main env); imported only when a knob is tested (1.5 s)
        from scipy.stats import mannwhitneyu
        p = float(mannwhitneyu(t, d, alternative="two-sided").pvalue) if len(t) > 1 and len(d) > 1 else None
        first, first_d = tuned[0], default[0]
        row = {**({"server": server} if server else {}), "base_variant": base, "knobs": setting,
               "tokens": f"{n_in}-{n_out}",
               "trials": len(t), "default_trials": len(d),
               "tpot_ms": round(mt, 2), "default_tpot_ms": round(md, 2), "speedup": round(md / mt, 3),
               "p_value": None if p is None else round(p, 4),
               "x_floor": _x_floor(mt, first.get("decode_floor_ms")),
               "default_x_floor": _x_floor(md, first_d.get("decode_floor_ms")),
               "ttft_ms": first.get("ttft_ms"), "default_ttft_ms": first_d.get("ttft_ms"),
               "size_MB": round(first["size_bytes"] / 1e6, 1) if first.get("size_bytes") else None,
               "default_size_MB": round(first_d["size_bytes"] / 1e6, 1) if first_d.get("size_bytes") else None}
        for key in ("dx_top3", "dc_complete", "rougeL_vs_fp32"):
            q, qd = (first.get("quality") or {}).get(key), (first_d.get("quality") or {}).get(key)
            if q is not None and qd is not None:
                row[f"{key}_change"] = round(q - qd, 3)
        rows.append(row)
    return pd.DataFrame(rows)


def _pair_verdict(speedup: float, p) -> str:
    if p is None or p >= ALPHA or abs(speedup - 1) <= MIN_EFFECT:
        return "cannot tell"
    return "faster" if speedup > 1 else "slower"


def verdicts(effects):
    """Per tuned setting: the geometric mean speedup over the run's token pairs and a verdict:
    faster / slower (every pair beyond chance and MIN_EFFECT, the same way), mixed (pairs
    disagree), or "cannot tell" (this run's trials do not separate it from its default)."""
    import pandas as pd
    cols = ["base_variant", "knobs", "pairs", "speedup", "verdict", "per_pair"]
    if effects is None or len(effects) == 0:
        return pd.DataFrame(columns=cols)
    out = []
    by = (["server"] if "server" in effects else []) + ["base_variant", "knobs"]
    for key, g in effects.groupby(by, sort=False):
        *server, base, setting = key
        s = list(g["speedup"])
        mean = math.exp(sum(math.log(x) for x in s) / len(s))
        each = [_pair_verdict(x, p) for x, p in zip(g["speedup"], g["p_value"])]
        verdict = each[0] if len(set(each)) == 1 else "mixed" if {"faster", "slower"} <= set(each) else "cannot tell"
        out.append({**({"server": server[0]} if server else {}),
                    "base_variant": base, "knobs": setting, "pairs": len(s), "speedup": round(mean, 3),
                    "verdict": verdict,
                    "per_pair": ", ".join(f"{t}: {x:.2f}x (p={p})" for t, x, p in
                                          zip(g["tokens"], g["speedup"], g["p_value"]))})
    return pd.DataFrame(out, columns=(["server"] if "server" in effects else []) + cols)


def verdict_text(table) -> str:
    """The verdicts in sentences, best first, for the notebook and the report."""
    if table is None or len(table) == 0:
        return ("This run has no tuned variants (a variant with knobs beside the same variant at its "
                "defaults), so it says nothing about the knobs: run a tuning config, e.g. "
                "`medwb bench --config configs/tune-tinyllama-1.1b.yaml`.")
    lines = []
    for _, r in table.sort_values("speedup", ascending=False).iterrows():
        on = f" on {r['server']}" if "server" in r else ""
        lines.append(f"{r['base_variant']} with {r['knobs']}{on}: {r['verdict']} "
                     f"({r['speedup']:.3f}x its default's speed; {r['per_pair']})")
    return "\n".join(lines)
