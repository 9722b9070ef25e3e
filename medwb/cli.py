"""`medwb` command line: demo-model, run, bench, overhead, data, sysinfo.

User errors (MedwbError) print one line, `medwb: error: ...`, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import medwb  # noqa: F401  (offline switches before any model library)
from medwb.errors import MedwbError


def cmd_demo_model(args) -> int:
    from medwb.models import demo_model
    if (args.recipe != "shipped" or args.pause_after is not None or args.state_dir
            or args.device != "cpu") and not args.rebuild:
        raise MedwbError("--recipe, --pause-after, --state-dir and --device choose how --rebuild trains: "
                         "add --rebuild")
    if args.pause_after is not None and not 0 < args.pause_after <= 1000:
        raise MedwbError(f"--pause-after {args.pause_after} is not a number of hours above 0: e.g. --pause-after 2")
    if args.rebuild:
        from medwb.eval import demo_build
        from medwb.models.training import Paused
        try:
            path = demo_build.rebuild(demo_model.on_device(demo_model.RECIPES[args.recipe], args.device),
                                      out=args.out, force=args.force,
                                      state_dir=args.state_dir,
                                      pause_after_s=None if args.pause_after is None else args.pause_after * 3600)
        except Paused as p:
            print(f"training {p}: run the same command again to go on (the result is the one an "
                  "uninterrupted build gives)")
            return 0
    elif args.force and not args.out:
        raise MedwbError("--force replaces what --out names, or retrains with --rebuild: "
                         "give one of them")
    else:
        path = demo_model.export(args.out, force=args.force) if args.out else demo_model.ensure()
    manifest = demo_model.read_manifest(path)
    print(demo_model.format_quality(manifest["quality"], manifest["recipe"].get("targets", {})))
    tr = manifest["training"]
    print(f"(measured when this model was built, {manifest['built_at']} on {manifest.get('cpu', '?')}; "
          f"{tr['steps']} steps on {tr['threads']} thread(s) in {tr['seconds']:.0f} s, "
          f"{manifest['parameters'] / 1e6:.2f} M parameters)")
    if args.doctor_style:
        from medwb import sysinfo
        from medwb.eval import demo_build, doctor_style
        figures = demo_build.evaluate_doctor_style(path, manifest["recipe"]["eval"]["max_new_tokens"])
        print(doctor_style.format_figures(figures) + f"\n(measured now, greedy FP32, on {sysinfo.cpu()['model']})")
    elif "doctor_style" in manifest["quality"]:
        from medwb.eval import doctor_style
        print(doctor_style.format_figures(manifest["quality"]["doctor_style"]) + "\n(measured when it was built)")
    else:
        print("cases written the way doctors write (data/heldout/doctor_style.jsonl): not measured when this model "
              "was built; --doctor-style measures them now (about two minutes)")
    print(f"demo model: {path}")
    return 0


def parse_params(items: list[str]) -> dict:
    """``NAME=VALUE`` pairs, each VALUE read as YAML as papermill's own CLI does (1 -> int,
    False -> bool, [[32, 8]] -> list; anything else stays a string)."""
    import yaml
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise MedwbError(f"-p {item!r}: write NAME=VALUE, e.g. -p trials=1")
        try:
            out[name.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[name.strip()] = value
    return out


def cmd_run(args) -> int:
    from medwb import runner
    from medwb.models import demo_model
    demo_model.ensure()  # derived once, before the notebooks, so none of them races to do it
    notebooks = [Path(p) for p in args.notebooks] if args.notebooks else runner.discover()
    missing = [str(p) for p in notebooks if not p.exists()]
    if missing:
        raise MedwbError(f"notebook(s) not found: {', '.join(missing)}; give paths of notebooks/NN_*.ipynb "
                         "(none: all of them)")
    params = parse_params(args.param or [])
    if args.runs_dir:
        from medwb.paths import check_writable_dir
        check_writable_dir(args.runs_dir, "--runs-dir")
    run, records = runner.run_all(notebooks, Path(args.runs_dir) if args.runs_dir else None, params)
    failed = [r["notebook"] for r in records if r["status"] != "ok"]
    print(f"results: {run}  (also {run.parent / 'latest'})")
    if failed:
        print(f"failed notebooks: {', '.join(failed)}; see {run / 'summary.json'}", file=sys.stderr)
        return 1
    print(f"all {len(records)} notebooks ran")
    return 0


def cmd_app(args) -> int:
    from medwb.apps import serve
    return serve.run(args.workflow, args.config, args.run_dir, args.ip, args.port, args.token_file)


def _trust_arg(parser) -> None:
    """--trust-remote-code: the user's consent to run a model folder's own Python code
    (ChatGLM3, GLM-4 chat), for this command and every process it starts."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model folder's own Python code (modeling_*.py: ChatGLM2/3, GLM-4 chat); "
                             "read it first. Without it such a folder is refused")


def _pool_server_args(parser, port: int, token_help: str) -> None:
    """The options a server on the shared model pool takes (`medwb app`, `medwb serve`)."""
    _trust_arg(parser)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "app.yaml"),
                        help="the model pool's YAML file (default: configs/app.yaml)")
    parser.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                                                          "machine only; another needs MEDWB_APP_TOKEN or --token-file)")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--token-file", help="file holding " + token_help)


def cmd_serve(args) -> int:
    from medwb.apps import endpoint
    return endpoint.run(args.config, args.run_dir, args.ip, args.port, args.token_file, args.max_queue,
                        args.max_tokens)


def cmd_serve_load(args) -> int:
    from medwb.apps.serve import resolve_token
    from medwb.bench import serve_load
    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        raise MedwbError(f"--rates {args.rates!r}: comma-separated requests per second, e.g. 0.5,1,2") from None
    token, _ = resolve_token("127.0.0.1", args.token_file)
    if not args.token_file and not os.environ.get("MEDWB_APP_TOKEN"):
        raise MedwbError("--token-file: give the endpoint's token (a file, or MEDWB_APP_TOKEN)")
    if args.run_dir:
        from medwb.paths import check_writable_dir
        check_writable_dir(args.run_dir, "--run-dir")
    run_dir = serve_load.run(args.url.rstrip("/"), token, args.model or "", rates, args.requests, args.max_tokens,
                             args.run_dir)
    print(f"records: {run_dir / 'records' / 'serve_load.jsonl'}; plot: {run_dir / 'serve_load.png'}")
    return 0


def cmd_app_load(args) -> int:
    from medwb.bench import app_load
    try:
        doctors = [int(x) for x in args.doctors.split(",") if x.strip()]
    except ValueError:
        raise MedwbError(f"--doctors {args.doctors!r}: comma-separated counts, e.g. 1,5,10") from None
    app_load.run(args.config, doctors, args.rounds, args.think_s, args.run_dir)
    return 0


def cmd_overhead(args) -> int:
    from medwb import runner
    from medwb.bench import overhead
    from medwb.bench.records import write_records
    if args.cases < 1 or args.max_new_tokens < 1:
        raise MedwbError("--cases and --max-new-tokens must be positive integers")
    if args.run_dir:
        from medwb.paths import check_writable_dir
        check_writable_dir(args.run_dir, "--run-dir")
    models = [m.strip() for m in args.variants.split(",") if m.strip()]
    records = overhead.measure(models, args.cases, args.max_new_tokens, args.threads)
    run = Path(args.run_dir) if args.run_dir else runner.new_run_dir()
    path = write_records(records, run, "overhead")
    for r in records:
        if r.get("error"):
            print(f"{r['model']}: error: {r['error']}")
        else:
            print(f"{r['model']}: {r['new_tokens']} tokens over {r['records']} records; direct "
                  f"{r['direct_ms_per_token']:.3f} ms/token, through the app's worker {r['worker_ms_per_token']:.3f} "
                  f"({r['overhead_pct']:+.1f}%); same text {sum(r['same_text'])}/{len(r['same_text'])}")
    print(f"records: {path}")
    return 0


def cmd_bench(args) -> int:
    from medwb.backends.variants import parse_variants
    from medwb.bench import config
    from medwb import jobs
    from medwb.bench import run as bench
    cfg = config.load_config(
        args.config, model=args.model, trials=args.trials, threads=args.threads,
        quality_cases=args.quality_cases, timeout_s=args.timeout, concurrent=args.concurrent, rounds=args.rounds,
        variants=parse_variants(args.variants) if args.variants else None,
        token_pairs=config.parse_token_pairs(args.token_pairs) if args.token_pairs else None)
    records = jobs.bench(cfg, args.run_dir, progress=not args.no_progress, cluster=args.cluster or "")
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(bench.table(records).to_string(index=False))
    from medwb.bench import tuning
    effects = tuning.knob_effects(records)
    if len(effects):  # a tuning run: each knob against its default, from this run
        print("\nknobs against their defaults (this run):\n" + tuning.verdict_text(tuning.verdicts(effects)))
    run = Path(records[0]["run_dir"])
    print(f"records: {run / 'records' / 'bench.jsonl'}\n         {run / 'records' / 'bench.csv'}")
    # Left out by the matrix (the family's routes, a stand-in) is not a failure: said apart.
    left = [r["variant"] for r in records if str(r.get("error") or "").startswith("not run:")]
    failed = [r["variant"] for r in records if r.get("error") and r["variant"] not in left]
    if left:
        print(f"not run (why: in their records and above): {', '.join(left)}", file=sys.stderr)
    if failed:
        print(f"failed variants (error in their records): {', '.join(failed)}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    """Every variant answers a PromptCBLUE-format file (default: the bundled synthetic set,
    data/eval/medwb-eval-v1.jsonl), greedy, each in its own process; scored by the official
    PromptCBLUE rules, with bootstrap intervals and the paired difference to FP32. Answers
    are cached: a rerun resumes, and the same run again loads no model."""
    from medwb.eval import report
    from medwb import jobs
    from medwb.eval import run as evaluation
    if args.rescore:
        result = evaluation.rescore(args.rescore, rules=args.rules or "")
    else:
        result = jobs.evaluate(model=args.model, eval_file=args.eval_file, variants=args.variants,
                                limit=args.limit, threads=args.threads, task_map=args.task_map, rules=args.rules,
                                bootstrap=args.bootstrap, timeout_s=args.timeout, cluster=args.cluster,
                                run_dir=args.run_dir, progress=not args.no_progress)
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 80):
        print(report.guard_table(result["scores"], result["verdicts"]).to_string())
    print(f"report: {result['paths']['html']}\nscores: {result['paths']['csv']}\n"
          f"per-sample logs: {result['dir'] / 'samples'}")
    if result["errors"]:
        print("failed variants (run again to resume): " + ", ".join(result["errors"]), file=sys.stderr)
        return 1
    return 0


def cmd_fidelity(args) -> int:
    """Teacher-forced comparison with PyTorch FP32 (as llama.cpp's --kl-divergence): mean KL
    divergence with its standard error and percentiles, same top token with its interval,
    RMS delta-p and the perplexity ratio, each variant in its own environment; judged
    against configs/decision.yaml. Cached per model, texts and variant; per-token rows go
    to <run>/fidelity/."""
    from medwb.eval import fidelity
    summary = fidelity.run(model=args.model or "demo", variants=args.variants or "", texts=args.texts or "",
                           context=args.context, count=args.windows, threads=args.threads, run_dir=args.run_dir,
                           decision_file=args.decision or "")
    import pandas as pd
    with pd.option_context("display.width", 220, "display.max_columns", 20, "display.max_colwidth", 120):
        print(fidelity.table(summary).to_string(index=False))
    print(f"per-token rows and summary: {summary['dir']}")
    return 0


def cmd_cluster(args) -> int:
    from medwb.cluster import start
    if args.action == "head":
        return start.head(args.ip, args.port, args.serve, args.kind, args.cores)
    if args.action == "stop":
        return start.stop()
    if not args.address:
        raise MedwbError(f"cluster {args.action}: give the head's HOST:PORT, e.g. medwb cluster {args.action} "
                         "10.0.0.5:6379")
    if args.action == "join":
        return start.join(args.address, args.ip, args.kind, args.cores)
    return start.status(args.address)


def cmd_data(args) -> int:
    from medwb.tasks import corpus, evalset
    if args.out:
        from medwb.paths import check_writable_dir
        check_writable_dir(args.out, "--out")  # also refuses a file
    for path in corpus.write_heldout(Path(args.out) if args.out else corpus.HELDOUT_DIR):
        print(f"wrote {path}")
    print(f"wrote {evalset.write(Path(args.out) / evalset.EVAL_FILE.name if args.out else evalset.EVAL_FILE)}")
    return 0


def cmd_sysinfo(args) -> int:
    from medwb import sysinfo
    rep = sysinfo.report("main")
    if args.bigdl:
        rep["bigdl_env"] = sysinfo.bigdl_report()
    print(json.dumps(rep, ensure_ascii=False, indent=2))
    return 0


def cmd_feedback(args) -> int:
    from medwb.apps import feedback
    path = Path(args.database)
    if not path.is_file():
        raise MedwbError(f"database '{path}' does not exist: give the feedback_db of notebooks 04/05 "
                         "(by default feedback.sqlite in their run folder)")
    if args.report:
        from medwb.apps import usage_report
        from medwb.paths import check_writable_dir
        out = check_writable_dir(Path(args.out) if args.out else path.parent / "usage_report", "--out")
        report = usage_report.build(path, period=args.period, origin=args.origin)
        paths = usage_report.write(report, out)
        shown = report["by_workflow"]
        print(("SIMULATED DATA (medwb feedback simulate)\n" if report["simulated"] else "")
              + (shown.to_csv(index=False) if args.csv else shown.to_string(index=False)))
        print(f"report: {paths['html']}")
        return 0
    table = feedback.summary(path, origin=args.origin)
    if table.empty:
        print(f"{path}: no answers stored" + (f" with origin {args.origin}" if args.origin else ""))
    else:
        print(table.to_csv() if args.csv else table.to_string())
    return 0


def cmd_feedback_simulate(args) -> int:
    from medwb.apps import simulate
    counts = simulate.simulate(args.db, days=args.days, seed=args.seed, models=args.models or simulate.DEFAULT_MODELS,
                               threads=args.threads, log=print if not args.quiet else (lambda *_: None))
    print(json.dumps(counts, ensure_ascii=False))
    print(f"SIMULATED activity written to {args.db}; report: medwb feedback {args.db} --report")
    return 0


def cmd_doctor(args) -> int:
    from medwb import doctor
    models = args.model or ["demo"]
    matrices = [doctor.routes(m) for m in models]  # an unknown architecture: one line, status 2
    rows = doctor.checks(models)
    if args.json:
        print(json.dumps({"checks": rows, "routes": matrices}, ensure_ascii=False, indent=1))
    else:
        print("\n\n".join([doctor.format_table(rows)] + [doctor.format_routes(m) for m in matrices]))
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


def cmd_bundle(args) -> int:
    from medwb import bundle
    bundle.build(args.out, platform=args.platform, python_version=args.python_version, archive=args.archive)
    return 0


def cmd_compare_runs(args) -> int:
    from medwb import provenance
    result = provenance.compare(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(provenance.format_comparison(result))
    return 1 if result["outputs_differ"] else 0


def _matrix_command(sub, name: str, help: str, func, model_help: str,
                    threads_default: int | None = None) -> argparse.ArgumentParser:
    """A command over a model's variants: --model, --variants and --threads as the evaluation
    and the fidelity measurement take them (None: the command's config decides). Its
    description is `func`'s docstring."""
    p = sub.add_parser(name, help=help, description=" ".join(func.__doc__.split()))
    p.add_argument("--model", help=model_help)
    p.add_argument("--variants", help="comma-separated backend:[weights/]precision (default: the benchmark's "
                                      "default matrix, what notebook 03 compares)")
    p.add_argument("--threads", type=int, default=threads_default, help="CPU threads (0: all cores)")
    _trust_arg(p)
    return p


def _records_command(p: argparse.ArgumentParser, func) -> None:
    """A command that writes records: its --run-dir, and what runs it."""
    p.add_argument("--run-dir", help="folder for records (default: a new runs/<timestamp>)")
    p.set_defaults(func=func)


class _Parser(argparse.ArgumentParser):
    """argparse's errors as every other bad input: one line naming the option, status 2
    (argparse prints the whole usage first). Subcommands inherit the class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def parser() -> argparse.ArgumentParser:
    from medwb.bench.config import DEFAULT_CONFIG as DEFAULT_BENCH_CONFIG
    p = _Parser(prog="medwb", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-model", help="the shipped demo model: its path and quality; --rebuild trains it",
                       description="Print the shipped demo model's quality and the folder every route loads "
                                   "(derived once into the medwb cache). --rebuild trains the recipe on this "
                                   "machine (fixed steps, quality gate), e.g. after adding a department file.")
    d.add_argument("--out", help="also copy the model to this directory (with --rebuild: the committed "
                                 "files only, e.g. data/demo-model to ship the new build)")
    d.add_argument("--rebuild", action="store_true", help="train the recipe here (about an hour on 2 cores)")
    d.add_argument("--force", action="store_true", help="with --rebuild: train even if this machine has "
                                                        "a verified build; with --out: replace the folder")
    # demo_model.RECIPES' names, written out: importing it here would cost every command 0.1 s.
    d.add_argument("--recipe", choices=("shipped", "candidate", "candidate-copy"), default="shipped",
                   help="with --rebuild: the shipped model's recipe, or a candidate that is to replace it "
                        "(wider, with a copy drill: several hours; docs/demo-model.md)")
    d.add_argument("--pause-after", type=float, metavar="HOURS",
                   help="with --rebuild: save the training state and stop after about this long (the whole "
                        "command, both stages); the same command goes on from it, to the same weights as one "
                        "uninterrupted build")
    d.add_argument("--state-dir", metavar="DIR",
                   help="with --rebuild: keep the training state here (e.g. data/demo-model-training, to "
                        "commit it and go on in another session) instead of the medwb cache")
    d.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="with --rebuild: train on this machine's GPU (a build of its own data hash, never "
                        "taken for the CPU build, which stays the reproducible definition)")
    d.add_argument("--doctor-style", action="store_true",
                   help="also answer the cases written the way doctors write (data/heldout/doctor_style.jsonl) "
                        "and print task-format, primary-diagnosis and grounding rates with 95%% intervals")
    d.set_defaults(func=cmd_demo_model)

    r = sub.add_parser("run", help="execute every notebook into runs/<timestamp>/")
    r.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/NN_*.ipynb)")
    r.add_argument("--runs-dir", help="parent of the run folders (default: ./runs)")
    r.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="override a parameter in every notebook that declares it (VALUE read as YAML: "
                        "1, False, [[32, 8]], text)")
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("app", help="serve a clinical app as a web page for several doctors (Voila, one shared "
                                   "model pool, token, 127.0.0.1 by default)")
    a.add_argument("workflow", nargs="?", default="diagnosis", help="diagnosis (鉴别诊断) or discharge (出院记录)")
    _pool_server_args(a, 8866, "the access token (default: a random one, printed in the URL)")
    a.add_argument("--run-dir", help="folder for the feedback store, logs and the pool's socket "
                                     "(default: a new runs/<timestamp>)")
    a.set_defaults(func=cmd_app)

    sv = sub.add_parser("serve", help="an OpenAI-compatible endpoint (/v1/chat/completions, /v1/completions, "
                                      "/v1/models, /health, /metrics) for the configured variants, on one shared pool")
    _pool_server_args(sv, 8000, "the bearer token (default: a random one, printed)")
    sv.add_argument("--max-queue", type=int, default=4, help="requests that may wait per model beside the one "
                                                             "it generates; more are answered 429 (default 4)")
    sv.add_argument("--max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    sv.add_argument("--run-dir", help="folder for the pool's logs and socket (default: a new runs/<timestamp>)")
    sv.set_defaults(func=cmd_serve)

    sl = sub.add_parser("serve-load", help="N requests at each request rate against a running `medwb serve` "
                                           "endpoint: TTFT, TPOT, end to end, p50/p90/p99, throughput, 429s")
    sl.add_argument("--url", default="http://127.0.0.1:8000", help="the endpoint (default http://127.0.0.1:8000)")
    sl.add_argument("--token-file", help="file holding the endpoint's bearer token (or MEDWB_APP_TOKEN)")
    sl.add_argument("--model", help="the model to load (default: the endpoint's first)")
    sl.add_argument("--rates", default="0.5,1,2", help="requests per second, comma-separated (default 0.5,1,2)")
    sl.add_argument("--requests", type=int, default=20, help="requests per rate (default 20)")
    sl.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    sl.add_argument("--run-dir", help="folder for the records and the plot (default: a new runs/<timestamp>)")
    sl.set_defaults(func=cmd_serve_load)

    al = sub.add_parser("app-load", help="benchmark the app server's shared model pool with N simulated doctors",
                        description="N doctors at once (each a page of its own on one shared pool), each doing "
                                    "rounds of generate, view, vote, back-fill; records go to "
                                    "<run>/records/app_load.jsonl.")
    al.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "app.yaml"),
                    help="the pool's YAML file, as for medwb app (default: configs/app.yaml)")
    al.add_argument("--doctors", default="1,5,10", help="comma-separated numbers of doctors at once")
    al.add_argument("--rounds", type=int, default=3, help="rounds per doctor")
    al.add_argument("--think-s", type=float, default=2.0, help="mean pause between a doctor's rounds, seconds")
    _trust_arg(al)
    _records_command(al, cmd_app_load)

    o = sub.add_parser("overhead", help="what the apps' worker path adds to calling a backend directly",
                       description="Same records and tokens through medwb's app worker and through the backend "
                                   "directly; records go to <run>/records/overhead.jsonl.")
    o.add_argument("--variants", default="pytorch:fp32,openvino-genai:int8/f32,llama.cpp:q4_0",
                   help="comma-separated models as the apps take them (backend:[weights/]precision[@path])")
    o.add_argument("--cases", type=int, default=8, help="held-out diagnosis records")
    o.add_argument("--max-new-tokens", type=int, default=200)
    o.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    _trust_arg(o)
    _records_command(o, cmd_overhead)

    b = sub.add_parser("bench", help="benchmark a matrix of variants, each in a fresh process",
                       description="Benchmark variants (backend:precision) of one model; records go to "
                                   "<run>/records/bench.jsonl and bench.csv. Flags override the config file.")
    b.add_argument("--config", help="YAML/JSON file with any of: " + ", ".join(DEFAULT_BENCH_CONFIG))
    from medwb.models.random_weights import SHAPES
    b.add_argument("--model", help="demo (default), shape:<name> (random weights, speed only: "
                                   f"{', '.join(SHAPES)}) or a local checkpoint folder")
    b.add_argument("--variants", help="comma-separated backend:[weights/]precision[knobs], e.g. "
                                      "pytorch:fp32,bigdl:sym_int4,bigdl-cli:int4,openvino-genai:int4/bf16,"
                                      "'openvino-genai:int4/bf16[int4_sym=true threads=1]' (knobs: "
                                      "medwb.bench.tuning.knob_table(), notebook 03)")
    b.add_argument("--token-pairs", help="comma-separated INPUT-OUTPUT token counts, e.g. 32-64,512-128")
    b.add_argument("--trials", type=int, help="timed runs per token pair (median reported)")
    b.add_argument("--threads", type=int, help="CPU threads (0: all cores)")
    b.add_argument("--quality-cases", type=int, help="held-out cases per workflow for quality (0: none)")
    b.add_argument("--timeout", type=int, help="seconds per variant before it is recorded as timed out")
    b.add_argument("--concurrent", type=int, help="also time N copies of each variant decoding at once, in "
                                                   "separate processes, the cores shared out (e.g. 3: the "
                                                   "diagnosis app's three models)")
    b.add_argument("--rounds", type=int, help="measure the whole matrix this many times, in turn (tuning "
                                               "runs: medwb.bench.tuning compares every round's trials)")
    b.add_argument("--run-dir", help="folder for records (default: a new runs/<timestamp>); with --cluster, "
                                     "an earlier cluster run of the same matrix is resumed")
    b.add_argument("--cluster", metavar="HOST:PORT", help="run the matrix on every server kind of a Ray cluster "
                                                           "(its head's address: `medwb cluster head`)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    _trust_arg(b)
    b.set_defaults(func=cmd_bench)

    e = _matrix_command(sub, "eval", "accuracy of every variant on PromptCBLUE-format medical tasks, vs FP32",
                        cmd_eval, "demo (default) or a local checkpoint folder")
    e.add_argument("--eval-file", help="PromptCBLUE-format JSON lines (input, target, answer_choices, "
                                       "task_type, task_dataset, sample_id)")
    e.add_argument("--limit", type=int, help="samples per task, a seeded random sample of each (0: all)")
    e.add_argument("--task-map", help="score unknown task names as a known task or family: "
                                      "NAME=TASK_OR_FAMILY[,...], e.g. MyNER=CMeEE-V2")
    e.add_argument("--bootstrap", type=int, help="bootstrap resamples for the intervals (default 1000)")
    e.add_argument("--timeout", type=int, help="seconds per variant before it is stopped (resumable)")
    e.add_argument("--run-dir", help="folder for the results (default: a new runs/<timestamp>)")
    e.add_argument("--cluster", metavar="HOST:PORT", help="answer in shards on a Ray cluster's servers "
                                                           "(threads 0: one per shard, packed on every core)")
    e.add_argument("--rescore", metavar="RUN_DIR", help="score an earlier run's answers again, no model")
    e.add_argument("--rules", choices=["official", "ccks2023"],
                   help="scoring rules: official (default: the PromptCBLUE repository's current rules) or ccks2023 "
                        "(the CCKS 2023 period's parser; see docs/evaluation.md)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)

    fd = _matrix_command(sub, "fidelity", "each variant's next-token distributions against FP32 on the same "
                         "token ids", cmd_fidelity, "demo (default), shape:<name> or a local checkpoint folder",
                         threads_default=0)
    fd.add_argument("--texts", help="your own texts: .txt (blank-line separated) or .jsonl ({\"text\": ...}); "
                                    "default: the bundled held-out clinical texts")
    fd.add_argument("--windows", type=int, default=8, help="windows of --context tokens; the second half of each "
                                                           "is scored (default 8)")
    fd.add_argument("--context", type=int, default=0, help="tokens per window (0: 512, or the model's context if "
                                                           "shorter)")
    fd.add_argument("--decision", help="thresholds file like configs/decision.yaml (default: that file)")
    _records_command(fd, cmd_fidelity)

    cl = sub.add_parser("cluster", help="start or join a Ray cluster of the hospital's servers for bench/eval "
                                        "--cluster (Ray's ports must stay inside the intranet)",
                        description="head: on the workstation that drives runs (runs no task); join: on each "
                                    "server, with its kind (CPU model, cores, ISA) and cores; status: the "
                                    "server kinds that joined; stop: this machine's Ray processes.")
    cl.add_argument("action", choices=["head", "join", "status", "stop"])
    cl.add_argument("address", nargs="?", help="join/status: the head's HOST:PORT")
    cl.add_argument("--ip", default="127.0.0.1", help="this machine's intranet address Ray listens on "
                                                      "(default 127.0.0.1: this machine only)")
    cl.add_argument("--port", type=int, default=6379, help="head: its port (default 6379)")
    cl.add_argument("--serve", action="store_true", help="head: this machine is also a server (one machine "
                                                          "alone: the head with --serve is the whole cluster)")
    cl.add_argument("--kind", default="", help="join / head --serve: the server kind (default: from the CPU "
                                               "model, cores and ISA)")
    cl.add_argument("--cores", type=int, default=0, help="join / head --serve: cores to give Ray (default: all)")
    cl.set_defaults(func=cmd_cluster)

    g = sub.add_parser("data", help="regenerate the held-out sets (data/heldout) and the evaluation set (data/eval)")
    g.add_argument("--out", help="directory to write (default: data/heldout and data/eval)")
    g.set_defaults(func=cmd_data)

    f = sub.add_parser("feedback", help="per-model like, adoption and error rates from a feedback database; "
                                        "--report: the usage report; `medwb feedback simulate`: a simulated month",
                       epilog="medwb feedback simulate --db FILE [--days 30]: a month of SIMULATED doctor activity "
                              "(real drafts from the demo model) in a separate database, to teach the report")
    f.add_argument("database", help="the SQLite file notebooks 04 and 05 write (feedback_db)")
    f.add_argument("--origin", choices=("ui", "scripted", "simulated"),
                   help="only rounds from doctors at the widgets (ui), from notebooks driving the app (scripted) "
                        "or from `medwb feedback simulate` (simulated)")
    f.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    f.add_argument("--report", action="store_true", help="the usage report per workflow, model and period: "
                                                         "CSV files and a self-contained HTML page")
    f.add_argument("--period", choices=("day", "week"), default="week", help="report per day or week (default week)")
    f.add_argument("--out", help="report folder (default: usage_report beside the database)")
    f.set_defaults(func=cmd_feedback)

    fs = sub.add_parser("feedback-simulate", prog="medwb feedback simulate",
                        help="a month of SIMULATED doctor activity in a separate database (see medwb feedback)")
    fs.add_argument("--db", required=True, help="a new SQLite file (never a database with real feedback)")
    fs.add_argument("--days", type=int, default=30, help="simulated days (default 30)")
    fs.add_argument("--seed", type=int, default=0, help="seed of the simulated doctors' choices")
    fs.add_argument("--models", nargs="+", help="models as in notebooks 04/05 (default: openvino-genai:int8/f32)")
    fs.add_argument("--threads", type=int, default=0, help="threads per worker (0: the cores shared out)")
    fs.add_argument("--quiet", action="store_true", help="no line per simulated day")
    _trust_arg(fs)
    fs.set_defaults(func=cmd_feedback_simulate)

    c = sub.add_parser("compare-runs", help="which greedy outputs and figures differ between two run folders, and why",
                       description="Compare two run folders (e.g. two `make run`s): the output MD5 of every "
                                   "measured variant, the main figures, and the manifests (commit, lock files, "
                                   "CPU, model, parameters). Exit status 1 when any output differs.")
    c.add_argument("run_a", help="a run folder, e.g. runs/20261125-101500")
    c.add_argument("run_b", help="another run folder, e.g. runs/latest")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(func=cmd_compare_runs)

    d = sub.add_parser("doctor", help="is this machine ready: environments, kernels, demo model, CPU, RAM and disk, "
                                      "telemetry off, no network variables (PASS/WARN/FAIL; status 1 on a FAIL)")
    d.add_argument("--model", nargs="+", help="planned checkpoint folders (or demo, shape:<name>): the RAM and disk "
                                              "checks, and each folder's family and which routes take it")
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    _trust_arg(d)
    d.set_defaults(func=cmd_doctor)

    from medwb import bundle  # standard library only: cheap, and the defaults live there
    b = sub.add_parser("bundle", help="on a connected machine: dist/medwb-bundle-<version>/ for an intranet "
                                      "(source, demo model, every locked wheel, SHA256SUMS, INSTALL.md)")
    b.add_argument("--out", default="dist", help="folder to write the bundle in (default dist)")
    b.add_argument("--platform", default=bundle.PLATFORM, help="target wheel platform")
    b.add_argument("--python-version", default=bundle.PYTHON_VERSION, help="target Python version")
    b.add_argument("--archive", action="store_true", help="also write one .tar.gz")
    b.set_defaults(func=cmd_bundle)

    s = sub.add_parser("sysinfo", help="print CPU features and both stacks' versions as JSON")
    s.add_argument("--bigdl", action="store_true", help="also query the bigdl environment")
    s.set_defaults(func=cmd_sysinfo)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["feedback", "simulate"]:  # `medwb feedback simulate` is a command of its own
        argv = ["feedback-simulate"] + argv[2:]
    args = parser().parse_args(argv)
    if getattr(args, "trust_remote_code", False):
        from medwb.models import architectures
        architectures.trust_remote_code()
    try:
        from medwb import sysinfo
        sysinfo.default_threads()  # a bad MEDWB_THREADS is refused before any command starts work
        return args.func(args)
    except MedwbError as e:
        print(f"medwb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medwb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
