"""The benchmark and the evaluation as a notebook or the command line starts them: on this
machine, or with ``cluster`` (a Ray head's HOST:PORT) on the hospital's servers.

This is the one place that chooses between the two, so ``medwb.bench`` and ``medwb.eval``
never import the cluster package: ``medwb.cluster`` builds on them (it times variants with
the benchmark's own functions and answers samples with the evaluation's), and it is
imported only when a cluster is asked for (Ray is an optional extra).
"""
from __future__ import annotations

from pathlib import Path

from medwb.errors import MedwbError


def bench(cfg: dict, run_dir=None, log=print, progress: bool = True, cluster: str = "") -> list[dict]:
    """``medwb.bench.run.run`` here, or the same matrix on every server kind of a cluster."""
    if cluster:
        from medwb.cluster import bench as cluster_bench
        from medwb.cluster.nodes import check_address
        return cluster_bench.run(cfg, check_address(cluster), run_dir, log=log, progress=progress)
    from medwb.bench import run as local
    return local.run(cfg, run_dir, log=log, progress=progress)


def bench_or_load(config_file="", records_from="", run_dir="", log=print, cluster: str = "",
                  trust_remote_code: bool | None = None, **overrides) -> list[dict]:
    """Notebook 03's entry: load the records of an earlier run folder, or run the benchmark
    (config file, then the notebook's parameters; empty parameters keep the config's), on
    this machine or, with ``cluster``, on a Ray cluster's servers. ``trust_remote_code``: the
    user's consent to run a model folder's own code (ChatGLM), as ``--trust-remote-code``
    gives it; None keeps this process's."""
    from medwb.backends import variants
    from medwb.bench import run as local
    from medwb.bench.config import load_config
    from medwb.models import architectures
    if trust_remote_code is not None:
        architectures.trust_remote_code(trust_remote_code)
    if records_from:
        if not (Path(records_from) / "records" / "bench.jsonl").exists():
            raise MedwbError(f"records_from '{records_from}' has no records/bench.jsonl: give a run folder "
                             "written by `medwb bench` or notebook 03, or leave it empty to run now")
        return local.load(records_from)
    if isinstance(overrides.get("variants"), list) and overrides["variants"] and \
            isinstance(overrides["variants"][0], str):
        overrides["variants"] = variants.parse_variants(",".join(overrides["variants"]))
    overrides = {k: v for k, v in overrides.items() if v not in ("", [], None)}
    return bench(load_config(config_file or None, **overrides), run_dir, log=log, cluster=cluster)


def evaluate(cfg: dict | None = None, run_dir=None, log=print, progress: bool = True, cluster: str = "",
             trust_remote_code: bool | None = None, **overrides) -> dict:
    """``medwb.eval.run.run``; with ``cluster``, the missing answers in shards on its servers.
    ``trust_remote_code`` (notebook 06): the consent ``--trust-remote-code`` gives; None keeps
    this process's."""
    from medwb.eval import run as evaluation
    from medwb.models import architectures
    if trust_remote_code is not None:
        architectures.trust_remote_code(trust_remote_code)
    cluster = cluster or (cfg or {}).get("cluster") or ""
    if not cluster:
        return evaluation.run(cfg, run_dir, log=log, progress=progress, **overrides)
    from medwb.cluster.nodes import check_address  # the address's form only: no Ray import yet
    address = check_address(cluster)

    def answer_remote(work, cfg, log, progress):
        from medwb.cluster.evaluation import answer_all
        return answer_all(work, cfg, address, log, progress)
    return evaluation.run(cfg, run_dir, log=log, progress=progress, answer_remote=answer_remote,
                          cluster=address, **overrides)
