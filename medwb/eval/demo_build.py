"""Training and gating the demo model (``medwb demo-model --rebuild``).

The model itself (where it ships, its checksums, the derived cache folder) is
``medwb.models.demo_model``; building it also *evaluates* it with the PyTorch backend and the
evaluation set's scorer before anything is kept, so the build sits here, above the backends,
and the model layer stays free of them.
"""
from __future__ import annotations

import platform
import shutil
import sys
import time
from pathlib import Path

from medwb.clock import now
from medwb.errors import MedwbError
from medwb.models.demo_model import (
    DERIVED_FILES, LABEL_TASKS, MANIFEST, RECIPE, SHIPPED_DIR, SHIPPED_FILES, builds_dir, check_shape,
    continued_texts, copy_model, data_hash, format_quality, gate, read_manifest, round_to_ship_dtype,
    save_checkpoint, stage1, training_cases, training_texts, verify)
from medwb.paths import atomic_dir, sha256_file, write_json_atomic
from medwb.tasks import corpus, prompts, workflow


def _example(tokenizer, prompt_text: str, answer: str, label: bool = False):
    """A training example; for diagnosis the first answer line (初步诊断：X) is the key,
    for a label task (``label``) the whole answer."""
    from medwb.models.training import Example

    prompt_ids = tokenizer(prompt_text)["input_ids"]  # starts with <s>
    answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    key = 0
    if label:
        key = len(answer_ids)
    elif answer.startswith(prompts.PRIMARY_HEADING):
        # Lines are separate pre-tokens, so the first line's tokens prefix the answer's.
        key = len(tokenizer(answer.split("\n", 1)[0], add_special_tokens=False)["input_ids"])
    return Example(prompt_ids, answer_ids, key)


def state_file(recipe: dict, state_dir: Path | None = None) -> Path:
    """Where the training state of ``recipe``'s build is kept between sittings: named by
    its data hash, in ``state_dir`` (a committed folder, to go on in another session or on
    another machine of the same kind) or the build cache."""
    return Path(state_dir or builds_dir()) / f"{data_hash(recipe)}.state.pt"


def rebuild(recipe: dict = RECIPE, out=None, force: bool = False, progress: bool = True,
            log=print, state_dir: Path | None = None, pause_after_s: float | None = None,
            deadline: float | None = None) -> Path:
    """Train the recipe on this machine into ``<cache>/demo-model-builds/<data hash>/``
    (reused when a verified build exists, unless ``force``); with ``out``, also copy the
    committed files there (``data/demo-model`` ships it). Raises when the quality gate
    refuses the model: nothing is kept then. Training saves its state as it goes
    (``state_file``) and a rerun goes on from it; with ``pause_after_s`` it stops there and
    raises ``training.Paused`` (the same command continues it). The seconds count for the
    whole command (both stages of a two-stage recipe): ``deadline`` is that moment on
    ``time.monotonic``'s clock. With ``state_dir`` (a committed folder), a build that passes
    is also kept in ``state_dir/<data hash>/``, and one found there is used, not retrained."""
    from filelock import FileLock

    device = recipe["train"].get("device", "cpu")
    if device != "cpu":
        import torch
        if not torch.cuda.is_available():  # before seconds of corpus generation and a lock
            raise MedwbError(f"--device {device}: PyTorch sees no CUDA GPU on this machine; "
                             "leave --device out to train on the CPU")
    if deadline is None and pause_after_s is not None:
        deadline = time.monotonic() + pause_after_s
    key = data_hash(recipe)
    path = builds_dir() / key
    kept = Path(state_dir) / key if state_dir else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists() and not force and verify(path, derived=False) is None:
            log(f"reusing the build at {path} (pass --force to train again)")
        elif kept is not None and not force and _verified(kept, key):
            # A build a sitting elsewhere finished and committed: the same weights, not retrained.
            copy_model(kept, path, True, SHIPPED_FILES, "--state-dir")
            log(f"reusing the build kept in {kept} (pass --force to train again)")
        else:
            build(path, recipe, progress=progress, log=log, state_dir=state_dir, deadline=deadline)
            if kept is not None:  # the sitting that commits the states commits what they made
                copy_model(path, kept, True, SHIPPED_FILES, "--state-dir")
                log(f"build kept in {kept} (commit it: a later sitting or stage goes on from it)")
    if out:
        copy_model(path, out, True, SHIPPED_FILES, "--out")
        log(f"copied to {out}")
    return path


def build(out_dir: Path, recipe: dict = RECIPE, progress: bool = True, log=print,
          state_dir: Path | None = None, deadline: float | None = None) -> dict:
    """Generate the corpus, train tokenizer and model, evaluate, gate, write ``out_dir``."""
    if "continued" in recipe:
        return build_continued(out_dir, recipe, progress=progress, log=log, state_dir=state_dir,
                               deadline=deadline)
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from medwb import sysinfo
    from medwb.models import tokenizer as tok_mod

    check_shape(recipe["model"])
    started = time.perf_counter()
    load_before = sysinfo.check_load(log=log)
    texts = training_texts(recipe)
    train_cases, heldout = training_cases(recipe)
    log(f"corpus: {len(train_cases)} training cases "
        f"({sum(bool(c.style) for c in train_cases)} in the varied style), {len(heldout)} held-out "
        f"cases ({len(corpus.load_knowledge())} diseases), disjoint by case signature")
    raw_tok = _train_tokenizer(recipe, texts)

    with atomic_dir(out_dir, overwrite=True) as tmp:
        tok_mod.save_tokenizer(raw_tok, tmp, recipe["model"]["max_position_embeddings"])
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp)
        examples = [_example(tokenizer, p, a) for p, a in texts]
        n_tokens = sum(e.length for e in examples)
        log(f"tokenizer: {len(tokenizer)} tokens; {len(examples)} training examples, "
            f"{n_tokens} tokens (mean {n_tokens / len(examples):.0f}, longest "
            f"{max(e.length for e in examples)} per example)")

        torch.manual_seed(recipe["train"]["seed"])
        model = LlamaForCausalLM(_config(recipe, tokenizer))
        tr = recipe["train"]
        if tr["zero_init_residual"]:
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.o_proj.weight.zero_()
                    layer.mlp.down_proj.weight.zero_()
        kwargs = _train_kwargs(tr, tr["lr"], tr["warmup_steps"], tokenizer.pad_token_id)
        calibration = _calibrate(model, examples, tr, kwargs, log)
        state = state_file(recipe, state_dir)
        first = None
        if tr.get("copy_first_steps"):  # the copy drill alone first: the drills are the last texts
            drills = recipe["corpus"]["copy_drill"]["examples"]
            first = (tr["copy_first_steps"], list(range(len(examples) - drills, len(examples))))
        train_log = _train(model, examples, tr["steps"], tr["threads"], kwargs, state,
                           _fingerprint(recipe, tmp / "tokenizer.json"), deadline, progress, log, first)
        # The gate judges the weights as they ship (16 bits above SHIP_LIMIT_BYTES).
        train_log["ship_dtype"] = round_to_ship_dtype(model)
        save_checkpoint(model, tmp, dtype=train_log["ship_dtype"])

        quality = evaluate_model(tmp, recipe["eval"], progress=progress)
        load_after = sysinfo.machine_load()
        failed = gate(quality, recipe.get("targets", {}))
        state.unlink(missing_ok=True)  # judged now, kept or refused: never continued
        _refuse(failed, recipe, quality, train_log, tr["threads"], load_before, load_after, "train.steps", log)
        manifest = _manifest(recipe, tmp, model, quality, train_log, calibration, started, load_before,
                             load_after)
        write_json_atomic(tmp / MANIFEST, manifest)
    log(f"demo model written to {out_dir} in {manifest['build_seconds']:.0f} s "
        f"({manifest['parameters'] / 1e6:.2f} M parameters)")
    log(_figures(quality, recipe))
    return manifest


def _train_tokenizer(recipe: dict, texts: list[tuple[str, str]]):
    """The recipe's tokenizer, trained on its texts (deterministic: a later sitting gets the
    same vocabulary, which the training state's fingerprint checks)."""
    from medwb.models import tokenizer as tok_mod
    tk = recipe["tokenizer"]
    tok_texts = [p + a for p, a in texts]
    tok_texts += [prompts.render_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])]
    return tok_mod.train_tokenizer(tok_texts, tk["vocab_size"], tk["min_frequency"])


def _config(recipe: dict, tokenizer):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       hidden_act="silu", **recipe["model"])


def checkpoint_from_state(recipe: dict, state_dir: Path, out_dir: Path) -> dict:
    """The weights of a paused stage-1 build (``state_file(recipe, state_dir)``) as an FP32
    checkpoint in ``out_dir`` that every loader takes, to measure a build between sittings
    (it is no demo model: no manifest, never gated or shipped). The tokenizer is trained
    again from the recipe; the state's fingerprint proves it is the one the state was
    trained with. Returns the state's step and steps."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from medwb.models import tokenizer as tok_mod
    from medwb.models.training import load_state
    if "continued" in recipe:
        raise MedwbError("checkpoint_from_state reads stage-1 states: pass demo_model.stage1(recipe)")
    state = state_file(recipe, state_dir)
    if not state.exists():
        raise MedwbError(f"no training state {state}: nothing to read")
    with atomic_dir(Path(out_dir), overwrite=True) as tmp:
        tok_mod.save_tokenizer(_train_tokenizer(recipe, training_texts(recipe)), tmp,
                               recipe["model"]["max_position_embeddings"])
        saved = load_state(state, _fingerprint(recipe, tmp / "tokenizer.json"), recipe["train"]["threads"])
        model = LlamaForCausalLM(_config(recipe, PreTrainedTokenizerFast.from_pretrained(tmp)))
        model.load_state_dict(saved["model"])
        save_checkpoint(model.eval(), tmp)
    return {"step": saved["step"], "steps": saved["steps"]}


def stage1_model(recipe: dict = RECIPE, progress: bool = True, log=print, state_dir: Path | None = None,
                 deadline: float | None = None) -> Path:
    """A verified model built from ``stage1(recipe)``: the shipped one, a local build or
    one kept in ``state_dir`` when their data hash matches, else trained now (the
    ~80-minute stage; hours for the candidate; ``rebuild`` keeps it in ``state_dir``)."""
    first = stage1(recipe)
    wanted = data_hash(first)
    kept = Path(state_dir) / wanted if state_dir else None
    for candidate in (SHIPPED_DIR, builds_dir() / wanted, kept):
        if candidate is not None and _verified(candidate, wanted):
            return candidate
    log(f"no stage-1 build with data hash {wanted}: training it first")
    return rebuild(first, progress=progress, log=log, state_dir=state_dir, deadline=deadline)


def _verified(path: Path, key: str) -> bool:
    """``path`` holds a complete, unaltered build of the data hash ``key``."""
    return verify(path, derived=False) is None and read_manifest(path).get("data_hash") == key


def _fingerprint(recipe: dict, tokenizer_file: Path, base: Path | None = None) -> str:
    """What a saved training state must have been saved for: the recipe's data, the
    tokenizer's exact vocabulary and, for stage 2, the stage-1 weights it continues."""
    parts = [data_hash(recipe), sha256_file(tokenizer_file)[:16]]
    if base is not None:
        parts.append(read_manifest(base)["files"]["model.safetensors"][:16])
    return "/".join(parts)


def _calibrate(model, examples, tr: dict, kwargs: dict, log) -> list[dict]:
    """The step rate alone and beside a busy core (``training.contention``), ~30 s: only
    for a real build."""
    from medwb.models import training
    if tr["steps"] < 200 or kwargs["device"] != "cpu":  # a GPU has no busy core to measure
        return []
    rows = training.contention(model, examples, thread_counts=sorted({1, 2, tr["threads"]}), **kwargs)
    for row in rows:
        log(f"step rate with {row['threads']} thread(s): {row['alone_steps_per_s']}/s alone, "
            f"{row['busy_core_steps_per_s']}/s beside one busy process ({row['slowdown']}x slower)")
    return rows


def _train(model, examples, steps: int, threads: int, kwargs: dict, state: Path, fingerprint: str,
           deadline: float | None, progress: bool, log, first=None) -> dict:
    """``training.train`` with its state saved in ``state`` as it goes (and continued
    from it when a previous sitting left one), paused at ``deadline`` (``time.monotonic``)."""
    from medwb.models import training
    if state.exists():
        log(f"going on from the training state in {state}")
    pause_after_s = None if deadline is None else max(0.0, deadline - time.monotonic())
    train_log = training.train(model, examples, steps=steps, threads=threads, progress=progress, state_path=state,
                               fingerprint=fingerprint, pause_after_s=pause_after_s, first=first,
                               sitting=_machine(kwargs.get("device", "cpu")), **kwargs)
    # One precision for the record; a build whose sittings differ says so (training.train).
    used = {s["bf16_autocast"] for s in train_log["sittings"]}
    train_log["bf16_autocast_used"] = used.pop() if len(used) == 1 else "mixed"
    if train_log["bf16_autocast_used"] == "mixed":
        log("note: the sittings of this build trained in different precisions (BF16 autocast where the CPU "
            "has BF16, FP32 elsewhere, unknown for a state saved before sittings were recorded): its "
            "weights are not those of an uninterrupted build on either kind of CPU (manifest: training.sittings)")
    return train_log


def build_continued(out_dir: Path, recipe: dict = RECIPE, progress: bool = True, log=print,
                    state_dir: Path | None = None, deadline: float | None = None) -> dict:
    """Stage 2: continue a verified stage-1 model on the evaluation tasks (with the
    workflows replayed), evaluate, gate, write ``out_dir``."""
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from medwb import sysinfo

    started = time.perf_counter()
    base = stage1_model(recipe, progress=progress, log=log, state_dir=state_dir, deadline=deadline)
    base_manifest = read_manifest(base)
    load_before = sysinfo.check_load(log=log)
    c, tr = recipe["continued"], recipe["train"]
    texts = continued_texts(recipe)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(base / name, tmp / name)  # stage 2 keeps stage 1's tokenizer
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp)
        examples = [_example(tokenizer, p, a, label=t in LABEL_TASKS) for t, p, a in texts]
        n_tokens = sum(e.length for e in examples)
        log(f"continued training from {base} (data hash {base_manifest['data_hash']}): "
            f"{len(examples)} examples, {n_tokens} tokens, {c['steps']} steps")
        model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        kwargs = _train_kwargs(tr, c["lr"], c["warmup_steps"], tokenizer.pad_token_id)
        calibration = _calibrate(model, examples, dict(tr, steps=c["steps"]), kwargs, log)
        state = state_file(recipe, state_dir)
        train_log = _train(model, examples, c["steps"], tr["threads"], kwargs, state,
                           _fingerprint(recipe, tmp / "tokenizer.json", base), deadline, progress, log)
        # The gate judges the weights as they ship (16 bits above SHIP_LIMIT_BYTES).
        train_log["ship_dtype"] = round_to_ship_dtype(model)
        save_checkpoint(model, tmp, dtype=train_log["ship_dtype"])

        quality = evaluate_model(tmp, recipe["eval"], progress=progress)
        quality["tasks"] = evaluate_tasks(tmp, c["max_new_tokens"])
        quality["doctor_style"] = evaluate_doctor_style(tmp, recipe["eval"]["max_new_tokens"])
        load_after = sysinfo.machine_load()
        failed = gate(quality, recipe.get("targets", {})) + task_gate(quality["tasks"], c["task_floors"])
        state.unlink(missing_ok=True)
        _refuse(failed, recipe, quality, train_log, tr["threads"], load_before, load_after, "continued.steps",
                log)
        manifest = _manifest(recipe, tmp, model, quality, train_log, calibration, started, load_before,
                             load_after, stage1={k: base_manifest.get(k) for k in (
                                 "data_hash", "files", "quality", "training", "contention", "built_at",
                                 "build_seconds", "cpu")})
        write_json_atomic(tmp / MANIFEST, manifest)
    log(f"demo model written to {out_dir} in {manifest['build_seconds']:.0f} s")
    log(_figures(quality, recipe))
    return manifest


def task_gate(scores: dict, floors: dict) -> list[str]:
    """The evaluation tasks whose main metric is below its floor."""
    return [f"{task}: {scores.get(task, {}).get('score') or 0:.3f} (floor {floor:.2f})"
            for task, floor in floors.items() if (scores.get(task, {}).get("score") or 0) < floor]


def evaluate_tasks(model_dir: Path, max_new_tokens: dict, batch_size: int = 24) -> dict:
    """Greedy FP32 on the bundled evaluation set, scored by the official rules: per task
    its main metric (``score``), the metric's name and the parse failures."""
    from medwb.backends.pytorch import PyTorchBackend
    from medwb.eval import dataset, scoring
    from medwb.tasks import evalset

    backend = PyTorchBackend.load(model_dir, "float32")
    result = {}
    for task, samples in dataset.load(evalset.EVAL_FILE).by_task().items():
        chat = [prompts.user_turn(s.input) for s in samples]
        outputs = backend.generate(chat, max_new_tokens=max_new_tokens[task], batch_size=batch_size)
        spec = scoring.task_spec(task)
        scored = scoring.score_task(spec, [s.target for s in samples], outputs,
                                    [s.answer_choices for s in samples])
        result[task] = {"score": scored["score"], "metric": spec.metric, "n": len(samples),
                        "parse_failures": scored["parse_failures"], "example": outputs[0]}
    return result


def evaluate_doctor_style(model_dir: Path, max_new_tokens: dict) -> dict:
    """The hand-written doctor-style set's figures (eval.doctor_style), reported beside the
    gate, not gated: ~30 cases give intervals too wide to refuse a build on."""
    from medwb.backends.pytorch import PyTorchBackend
    from medwb.eval import doctor_style
    figures = doctor_style.evaluate(PyTorchBackend.load(model_dir, "float32"), max_new_tokens)
    return {k: v for k, v in figures.items() if k != "examples"}


def _figures(quality: dict, recipe: dict) -> str:
    """Every figure a build measured, as printed when it is kept or refused: the gate's and,
    for a two-stage build, the doctor-written set's."""
    text = format_quality(quality, recipe.get("targets", {}))
    if "doctor_style" in quality:
        from medwb.eval import doctor_style
        text += "\n" + doctor_style.format_figures(quality["doctor_style"])
    return text


def _machine(device: str = "cpu") -> dict:
    """The CPU (and GPU) a record names: a training sitting, a refused build."""
    from medwb import sysinfo
    machine = {"cpu": sysinfo.cpu().get("model"), "isa": sysinfo.isa_flags()}
    if device != "cpu":
        import torch
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return machine


def _refuse(failed: list[str], recipe: dict, quality: dict, train_log: dict, threads: int, load_before: dict,
            load_after: dict, steps_key: str, log) -> None:
    """Raise with the figures to act on when the gate refused the model. The model is not
    kept, but what was measured is: every figure is printed and written to
    ``<builds>/<data hash>.refused.json`` (a record, never a model to use), since a refused
    build of hours is itself a measurement. A build that passes removes the record an earlier
    refused build of the same data left, so what the folder holds stays true."""
    key = data_hash(recipe)
    record = builds_dir() / f"{key}.refused.json"
    if not failed:
        record.unlink(missing_ok=True)
    else:
        log(_figures(quality, recipe))
        write_json_atomic(record, {"data_hash": key, "refused_at": now(), "failed": failed, "quality": quality,
                                   "training": train_log,
                                   "machine_load": {"before": load_before, "after": load_after}, **_machine()})
        raise MedwbError(
            "the demo model failed its quality gate, so it was not kept: " + "; ".join(failed)
            + f". Trained {train_log['steps']} steps at {train_log['steps_per_s']} steps/s on "
            f"{threads} thread(s) (load average {load_before['loadavg_1m']} before, "
            f"{load_after['loadavg_1m']} after, on {load_before['cores']} cores). The step count is "
            f"fixed, so a busy machine makes it slower, not worse: raise {steps_key} in the recipe, "
            f"or check the knowledge-table edit that changed the data. Every figure: {record}")


def _manifest(recipe, tmp: Path, model, quality, train_log, calibration, started, load_before, load_after,
              **extra) -> dict:
    import torch

    from medwb import sysinfo
    return {
        "name": recipe["name"], "data_hash": data_hash(recipe), "recipe": recipe,
        "files": {name: sha256_file(tmp / name) for name in SHIPPED_FILES},
        "derived": {n: sha256_file(tmp / n) for n in DERIVED_FILES if (tmp / n).exists()},
        "quality": quality, "training": train_log, "contention": calibration, **extra,
        "parameters": sum(p.numel() for p in model.parameters()),
        "built_at": now(),
        "build_seconds": round(time.perf_counter() - started, 1),
        "machine_load": {"before": load_before, "after": load_after},
        "cpu": sysinfo.cpu().get("model"), "python": sys.version.split()[0],
        "machine": platform.machine(), "torch": torch.__version__,
    }


def _train_kwargs(tr: dict, lr: float, warmup_steps: int, pad_id: int) -> dict:
    """``training.train``'s settings for a stage of the recipe's ``train`` section (stage 2
    brings its own lr and warm-up), on the recipe's device (``demo_model.on_device``), with
    BF16 autocast where the recipe asks for it and that device has it."""
    device = tr.get("device", "cpu")
    if device != "cpu":
        import torch
        bf16 = tr["bf16_autocast"] and torch.cuda.is_bf16_supported()
    else:
        bf16 = tr["bf16_autocast"] and _cpu_has_bf16()
    return dict(lr=lr, warmup_steps=warmup_steps, weight_decay=tr["weight_decay"], batch_tokens=tr["batch_tokens"],
                seed=tr["seed"], pad_id=pad_id, bf16_autocast=bf16, loss_on_prompt=tr["loss_on_prompt"],
                key_weight=tr["key_weight"], device=device)


def _cpu_has_bf16() -> bool:
    from medwb.sysinfo import cpu_flags
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def evaluate_cases(backend, cases, max_new_tokens: dict, batch_size: int = 24) -> dict:
    """Greedy outputs of ``backend`` on ``cases``: diagnosis primary and top-3 hit rates,
    discharge section completeness, and grounding of both (medwb.quality.grounding)."""
    result = {"n_cases": len(cases)}
    for task in corpus.TASKS:
        inputs = [corpus.task_prompt(c, task) for c in cases]
        chat = [prompts.user_turn(x) for x in inputs]
        outputs = backend.generate(chat, max_new_tokens=max_new_tokens[task], batch_size=batch_size)
        scores = (workflow.diagnosis_scores(outputs, [c.disease for c in cases], inputs) if task == "diagnosis"
                  else workflow.discharge_scores(outputs, inputs))
        result.update({f"{task}_{k}": v for k, v in scores.items()})
        result[f"{task}_example"] = outputs[0]
    return result


def evaluate_model(model_dir: Path, eval_cfg: dict | None = None, progress: bool = True) -> dict:
    """Greedy FP32 on both shipped held-out sets: the standard set's figures at the top
    level (the quality gate), the varied set's under ``varied``."""
    from medwb.backends.pytorch import PyTorchBackend

    eval_cfg = eval_cfg or RECIPE["eval"]
    backend = PyTorchBackend.load(model_dir, "float32")
    t0 = time.perf_counter()
    result = {}
    for name in corpus.HELDOUT_SETS:
        cases = corpus.heldout_cases(name)
        cases = cases[:eval_cfg["cases"]] if eval_cfg.get("cases") else cases
        figures = evaluate_cases(backend, cases, eval_cfg["max_new_tokens"])
        if name == "standard":
            result.update(figures)
        else:
            result[name] = figures
    result["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return result
