"""What a run was made from, and how two runs differ.

Every run folder gets ``manifest.json``: the git commit (and whether the tree had
uncommitted changes), the hashes of both lock files, the CPU model and flags, the demo
model's checksums, every parameter, and the load of the machine when it started.
``compare(run_a, run_b)`` (``medwb compare-runs``) reports which greedy outputs differ
(the MD5 every record carries, and the text hash of every answer in an app's feedback
store) and which figures, and what in the manifests could explain
it. On one machine, the same commit must give identical outputs for every deterministic
variant; a different CPU, library version or parameter can legitimately change them.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path

from medwb import jsonl
from medwb.clock import now
from medwb.errors import MedwbError
from medwb.paths import REPO_DIR, write_json_atomic

MANIFEST = "manifest.json"
LOCK_FILES = ("requirements/main.lock", "requirements/bigdl.lock")
# Fields that name a measured variant inside a records file (whatever is present).
IDENTITY = ("variant", "backend", "route", "precision", "weights", "kernel_choice", "kernel_build",
            "stateful", "input_tokens", "output_tokens", "n_prompt_tokens", "n_new_tokens")
# Figures compared between runs (timings always vary a little; the ratio says how much).
FIGURES = ("ttft_ms", "tpot_ms", "peak_rss_mb", "load_s", "size_bytes")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def collect(parameters: dict | None = None, kind: str = "run") -> dict:
    """The manifest of a run starting now."""
    from medwb import sysinfo
    from medwb.models import demo_model

    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        demo = demo_model.read_manifest(demo_model.SHIPPED_DIR)
        model = {"data_hash": demo.get("data_hash"), "files": demo.get("files")}
    except (OSError, ValueError) as e:
        model = {"error": str(e)}
    cpu = sysinfo.cpu()
    return {
        "kind": kind, "created": now(),
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None},
        "lock_files": {name: _sha256(REPO_DIR / name) for name in LOCK_FILES},
        "cpu": {"model": cpu.get("model"), "vendor": cpu.get("vendor"), "logical_cores": cpu.get("logical_cores"),
                "flags": sorted(sysinfo.cpu_flags())},
        "demo_model": model,
        "parameters": parameters or {},
        "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": sysinfo.versions(sysinfo.MAIN_PACKAGES),
        "machine_load": sysinfo.machine_load(),
    }


def write(run_dir, parameters: dict | None = None, kind: str = "run") -> dict:
    manifest = collect(parameters, kind)
    write_json_atomic(Path(run_dir) / MANIFEST, manifest)
    return manifest


# --- comparing two runs ------------------------------------------------------------------
def _read_manifest(run: Path) -> dict:
    path = run / MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def outputs(run: Path) -> dict[str, dict]:
    """key -> record, for every record under ``run`` that carries an ``output_md5``."""

    found: dict[str, dict] = {}
    for path in sorted(run.rglob("*.jsonl")):
        seen: dict[str, int] = {}
        for rec in jsonl.read(path):
            if not rec.get("output_md5"):
                continue
            ident = " ".join(f"{k}={rec[k]}" for k in IDENTITY if rec.get(k) is not None)
            seen[ident] = seen.get(ident, 0) + 1
            key = f"{path.relative_to(run)} | {ident}" + (f" #{seen[ident]}" if seen[ident] > 1 else "")
            found[key] = rec
    for db in sorted(run.rglob("*.sqlite")):  # the apps' answers (greedy too): text hashes
        for row in _answers(db):
            key = f"{db.relative_to(run)} | round={row['round_id']} slot={row['slot']} model={row['model_label']}"
            found[key] = {"output_md5": row["text_hash"]}
    return found


def _answers(db: Path) -> list[dict]:
    import sqlite3
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT round_id, slot, model_label, text_hash FROM outputs "
                            "WHERE status = 'ok' AND text_hash IS NOT NULL").fetchall()
        conn.close()
    except sqlite3.Error:  # not a feedback store: nothing to compare
        return []
    return [dict(r) for r in rows]


def _check_run(path, parameter: str) -> Path:
    run = Path(path)
    if not run.is_dir():
        raise MedwbError(f"{parameter} '{run}' is not a run folder: give a folder under runs/ "
                         "(e.g. runs/latest)")
    return run


def compare(run_a, run_b) -> dict:
    """Differences between two run folders: provenance, output MD5s, figures."""
    a, b = _check_run(run_a, "RUN_A"), _check_run(run_b, "RUN_B")
    ma, mb = _read_manifest(a), _read_manifest(b)
    reasons = []
    if not ma or not mb:
        reasons.append("a manifest is missing (run made before manifests existed): causes unknown")
    else:
        checks = [("git commit", ma["git"]["commit"], mb["git"]["commit"]),
                  ("uncommitted changes", ma["git"]["dirty"], mb["git"]["dirty"]),
                  ("lock files (package versions)", ma["lock_files"], mb["lock_files"]),
                  ("installed versions", ma.get("versions"), mb.get("versions")),
                  ("CPU model", ma["cpu"]["model"], mb["cpu"]["model"]),
                  ("CPU flags", ma["cpu"]["flags"], mb["cpu"]["flags"]),
                  ("demo model", ma["demo_model"], mb["demo_model"]),
                  ("parameters", ma["parameters"], mb["parameters"])]
        reasons = [f"{name} differ: {_short(x)} vs {_short(y)}" for name, x, y in checks if x != y]
        for label, m in (("RUN_A", ma), ("RUN_B", mb)):
            if not m.get("machine_load", {}).get("quiet", True):
                reasons.append(f"{label} started on a busy machine (timings slower; outputs unaffected)")
    oa, ob = outputs(a), outputs(b)
    common = sorted(set(oa) & set(ob))
    same = [k for k in common if oa[k]["output_md5"] == ob[k]["output_md5"]]
    differ = [k for k in common if oa[k]["output_md5"] != ob[k]["output_md5"]]
    figures = []
    for k in common:
        for field in FIGURES:
            x, y = oa[k].get(field), ob[k].get(field)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x:
                figures.append({"output": k, "figure": field, "run_a": x, "run_b": y, "ratio_b_to_a": round(y / x, 3)})
    return {"run_a": str(a), "run_b": str(b), "why_they_may_differ": reasons,
            "outputs_identical": same, "outputs_differ": differ,
            "only_in_a": sorted(set(oa) - set(ob)), "only_in_b": sorted(set(ob) - set(oa)),
            "figures": figures}


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def format_comparison(c: dict, max_figures: int = 40) -> str:
    lines = [f"comparing {c['run_a']} (A) with {c['run_b']} (B)"]
    lines.append("why outputs or figures may differ: " + ("; ".join(c["why_they_may_differ"]) or
                                                           "nothing: same commit, locks, CPU, model and parameters"))
    lines.append(f"greedy outputs (MD5): {len(c['outputs_identical'])} identical, {len(c['outputs_differ'])} differ, "
                 f"{len(c['only_in_a'])} only in A, {len(c['only_in_b'])} only in B")
    lines += [f"  DIFFERS: {k}" for k in c["outputs_differ"]]
    lines += [f"  only in A: {k}" for k in c["only_in_a"]] + [f"  only in B: {k}" for k in c["only_in_b"]]
    if c["figures"]:
        lines.append("figures (B / A; timings vary between runs):")
        worst = sorted(c["figures"], key=lambda f: -abs(f["ratio_b_to_a"] - 1))[:max_figures]
        lines += [f"  {f['ratio_b_to_a']:>6.3f}  {f['figure']:<11} {f['run_a']} -> {f['run_b']}  {f['output']}"
                  for f in worst]
    return "\n".join(lines)
