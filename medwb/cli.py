"""`medwb` command line: demo-model, run, bench, data, sysinfo.

User errors (MedwbError) print one line, `medwb: error: ...`, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import medwb  # noqa: F401  (offline switches before any model library)
from medwb.errors import MedwbError


def cmd_demo_model(args) -> int:
    from medwb import demo_model
    path = demo_model.export(args.out, force=args.force) if args.out else \
        demo_model.ensure(force=args.force)
    manifest = demo_model.read_manifest(path)
    print(demo_model.format_quality(manifest["quality"]))
    print(f"(measured when this model was built, {manifest['built_at']}; "
          f"training {manifest['training']['seconds']:.0f} s, {manifest['parameters'] / 1e6:.2f} M parameters)")
    print(f"demo model: {path}")
    return 0


def cmd_run(args) -> int:
    from medwb import demo_model, runner
    demo_model.ensure()  # built once, before the notebooks, so none of them trains it
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else runner.discover()
    missing = [str(p) for p in notebooks if not p.exists()]
    if missing:
        raise MedwbError(f"notebook(s) not found: {', '.join(missing)}")
    params = dict(kv.split("=", 1) for kv in args.param or [])
    run, records = runner.run_all(notebooks, Path(args.runs_dir) if args.runs_dir else None, params)
    failed = [r["notebook"] for r in records if r["status"] != "ok"]
    print(f"results: {run}  (also {run.parent / 'latest'})")
    if failed:
        print(f"failed notebooks: {', '.join(failed)}; see {run / 'summary.json'}", file=sys.stderr)
        return 1
    print(f"all {len(records)} notebooks ran")
    return 0


def cmd_bench(args) -> int:
    from medwb import bench
    cfg = bench.load_config(
        args.config, model=args.model, trials=args.trials, threads=args.threads,
        quality_cases=args.quality_cases, timeout_s=args.timeout,
        variants=bench.parse_variants(args.variants) if args.variants else None,
        token_pairs=bench.parse_token_pairs(args.token_pairs) if args.token_pairs else None)
    records = bench.run(cfg, args.run_dir, progress=not args.no_progress)
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(bench.table(records).to_string(index=False))
    run = Path(records[0]["run_dir"])
    print(f"records: {run / 'records' / 'bench.jsonl'}\n         {run / 'records' / 'bench.csv'}")
    failed = [r["variant"] for r in records if r.get("error")]
    if failed:
        print(f"failed variants (error in their records): {', '.join(failed)}", file=sys.stderr)
    return 0


def cmd_data(args) -> int:
    from medwb import corpus
    for path in corpus.write_heldout(Path(args.out) if args.out else corpus.HELDOUT_DIR):
        print(f"wrote {path}")
    return 0


def cmd_sysinfo(args) -> int:
    from medwb import sysinfo
    rep = sysinfo.report("main")
    if args.bigdl:
        rep["bigdl_env"] = sysinfo.bigdl_report()
    print(json.dumps(rep, ensure_ascii=False, indent=2))
    return 0


def cmd_feedback(args) -> int:
    from medwb import feedback
    path = Path(args.database)
    if not path.is_file():
        raise MedwbError(f"database '{path}' does not exist: give the feedback_db of notebook 04 "
                         "(by default feedback.sqlite in its run folder)")
    table = feedback.summary(path, origin=args.origin)
    if table.empty:
        print(f"{path}: no answers stored" + (f" with origin {args.origin}" if args.origin else ""))
    else:
        print(table.to_csv() if args.csv else table.to_string())
    return 0


def parser() -> argparse.ArgumentParser:
    from medwb.bench import DEFAULT_CONFIG as DEFAULT_BENCH_CONFIG
    p = argparse.ArgumentParser(prog="medwb", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-model", help="build (or reuse) the embedded demo model and print its quality")
    d.add_argument("--out", help="also copy the model to this directory")
    d.add_argument("--force", action="store_true", help="rebuild even if a valid cached model exists")
    d.set_defaults(func=cmd_demo_model)

    r = sub.add_parser("run", help="execute every notebook into runs/<timestamp>/")
    r.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/NN_*.ipynb)")
    r.add_argument("--runs-dir", help="parent of the run folders (default: ./runs)")
    r.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="override a notebook parameter (string value)")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="benchmark a matrix of variants, each in a fresh process",
                       description="Benchmark variants (backend:precision) of one model; records go to "
                                   "<run>/records/bench.jsonl and bench.csv. Flags override the config file.")
    b.add_argument("--config", help="YAML/JSON file with any of: " + ", ".join(DEFAULT_BENCH_CONFIG))
    b.add_argument("--model", help="demo (default), shape:<name> (random weights, speed only: "
                                   "tinyllama-1.1b, llama-26l-1.3b, llama2-7b) or a local checkpoint folder")
    b.add_argument("--variants", help="comma-separated backend:[weights/]precision, e.g. "
                                      "pytorch:fp32,bigdl:sym_int4,bigdl-cli:int4,openvino-genai:int4/bf16")
    b.add_argument("--token-pairs", help="comma-separated INPUT-OUTPUT token counts, e.g. 32-64,512-128")
    b.add_argument("--trials", type=int, help="timed runs per token pair (median reported)")
    b.add_argument("--threads", type=int, help="CPU threads (0: all cores)")
    b.add_argument("--quality-cases", type=int, help="held-out cases per workflow for quality (0: none)")
    b.add_argument("--timeout", type=int, help="seconds per variant before it is recorded as timed out")
    b.add_argument("--run-dir", help="folder for records (default: a new runs/<timestamp>)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    g = sub.add_parser("data", help="regenerate the held-out evaluation sets in data/heldout")
    g.add_argument("--out", help="directory to write (default: data/heldout)")
    g.set_defaults(func=cmd_data)

    f = sub.add_parser("feedback", help="per-model like, adoption and error rates from a feedback database")
    f.add_argument("database", help="the SQLite file notebook 04 writes (feedback_db)")
    f.add_argument("--origin", choices=("ui", "scripted"), help="only rounds from doctors at the widgets (ui) "
                                                              "or from notebooks driving the app (scripted)")
    f.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    f.set_defaults(func=cmd_feedback)

    s = sub.add_parser("sysinfo", help="print CPU features and both stacks' versions as JSON")
    s.add_argument("--bigdl", action="store_true", help="also query the bigdl environment")
    s.set_defaults(func=cmd_sysinfo)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except MedwbError as e:
        print(f"medwb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medwb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
