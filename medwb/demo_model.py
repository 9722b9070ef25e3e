"""The embedded demo model: built here, deterministically, from the bundled knowledge.

No model hub is reachable in hospitals or here, so the project trains its own small
Llama model on the synthetic corpus (``medwb.corpus``). Its shape is chosen so that every
route in the workbench can take it:

- Llama architecture, full multi-head attention (llm-cli rejects grouped-query attention);
- 26 layers (llm-cli's llama loader accepts only 26/32/40/60/80);
- every Linear input a multiple of 64 (bigdl's low-bit kernels require it);
- intermediate size = llama's ``multiple_of`` formula, which llm-convert's converter
  needs to recover ``n_mult``;
- saved as safetensors and as pytorch_model.bin (llm-convert reads only the latter).

The build is cached under ``<cache>/demo-model/<recipe hash>/``; the hash covers the
recipe, the knowledge table and the code that turns them into training data, so any
change rebuilds, and a manifest of file checksums makes a corrupt cache rebuild rather
than be trusted.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from medwb import corpus, evaluate, prompts
from medwb.errors import MedwbError
from medwb.paths import PACKAGE_DIR, atomic_dir, cache_dir, write_json_atomic

MANIFEST = "medwb_manifest.json"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Targets from the foundation issue, printed beside the measured figures.
TARGETS = {"diagnosis_top3_rate": 0.5, "discharge_sections_rate": 0.9}

RECIPE = {
    "name": "medwb-demo-llama",
    # Every training case gives a diagnosis example, every `discharge_every`-th one also a
    # discharge example: choosing the diagnosis is the harder skill to learn in the
    # budget (the discharge record is mostly reorganised copying).
    "corpus": {"train_cases_per_disease": 160, "seed": "medwb-train-v1", "discharge_every": 2},
    "heldout": {"cases_per_disease": 2, "seed": "medwb-heldout-v1"},
    "tokenizer": {"vocab_size": 4096, "min_frequency": 2},
    "model": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 26,
              "num_attention_heads": 2, "num_key_value_heads": 2,
              "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5},
    # zero_init_residual: every block starts as the identity (attention and MLP output
    # projections zeroed), so the 26-layer stack first trains like a shallow one; in a
    # same-budget comparison here the diagnosis skill emerged only with it.
    "train": {"seed": 0, "steps": 680, "lr": 3e-3, "warmup_steps": 30, "weight_decay": 0.01,
              "batch_tokens": 2048, "loss_on_prompt": True, "key_weight": 20.0,
              "zero_init_residual": True, "bf16_autocast": True, "max_seconds": 500},
    # Greedy budgets for the held-out evaluation (cases: 0 = all of them).
    "eval": {"cases": 0, "max_new_tokens": {"diagnosis": 200, "discharge": 480}},
}
# Code whose output is part of the model: editing any of it rebuilds the model.
RECIPE_SOURCES = ("corpus.py", "prompts.py", "tokenizer.py", "training.py")


def llama_intermediate_size(hidden_size: int, multiple_of: int) -> int:
    """Original LLaMA's FFN size rule, the one llm-convert inverts to find n_mult."""
    return multiple_of * ((8 * hidden_size // 3 + multiple_of - 1) // multiple_of)


def check_shape(model_cfg: dict) -> None:
    """Reject a recipe that some route of the workbench could not take."""
    h, inter = model_cfg["hidden_size"], model_cfg["intermediate_size"]
    problems = []
    if model_cfg["num_hidden_layers"] not in (26, 32, 40, 60, 80):
        problems.append("num_hidden_layers must be 26, 32, 40, 60 or 80 (llm-cli)")
    if model_cfg["num_key_value_heads"] != model_cfg["num_attention_heads"]:
        problems.append("num_key_value_heads must equal num_attention_heads (llm-cli)")
    if h % 64 or inter % 64:
        problems.append("hidden_size and intermediate_size must be multiples of 64 (bigdl)")
    if not any(llama_intermediate_size(h, m) == inter for m in range(1, 8193)):
        problems.append("intermediate_size does not follow llama's multiple_of rule (llm-convert)")
    if problems:
        raise MedwbError("demo model recipe: " + "; ".join(problems))


def recipe_hash(recipe: dict = RECIPE) -> str:
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    h.update(corpus.knowledge_digest().encode())
    for name in RECIPE_SOURCES:
        h.update((PACKAGE_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def cached_path(recipe: dict = RECIPE) -> Path:
    return cache_dir() / "demo-model" / recipe_hash(recipe)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(model_dir: Path, recipe: dict = RECIPE) -> str | None:
    """None if ``model_dir`` is a complete, unmodified build of ``recipe``; else why not."""
    manifest_path = Path(model_dir) / MANIFEST
    if not manifest_path.exists():
        return "no manifest"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if manifest.get("recipe_hash") != recipe_hash(recipe):
        return "built from another recipe"
    for name, digest in manifest.get("files", {}).items():
        path = Path(model_dir) / name
        if not path.exists():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum"
    if set(manifest.get("files", {})) != set(MODEL_FILES):
        return "manifest lists the wrong files"
    return None


def read_manifest(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8"))


def ensure(force: bool = False, recipe: dict = RECIPE, progress: bool = True,
           log=print) -> Path:
    """Path of the cached demo model, building it first when absent, stale or corrupt.

    A lock file serialises concurrent callers (e.g. `make run` and `make test` started
    together): the second waits and then reuses the first one's build.
    """
    from filelock import FileLock

    path = cached_path(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        problem = "--force given" if force else (verify(path, recipe) if path.exists() else None)
        if path.exists() and problem is None:
            return path
        if path.exists():
            log(f"cached demo model at {path} is not usable ({problem}): rebuilding")
            shutil.rmtree(path)
        build(path, recipe, progress=progress, log=log)
    return path


def export(out_dir: Path, force: bool = False, recipe: dict = RECIPE, log=print) -> Path:
    """Build (or reuse) the demo model and copy it to ``out_dir`` atomically."""
    src = ensure(force=force, recipe=recipe, log=log)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir == src.resolve():
        return src
    if out_dir.exists() and not force:
        if out_dir.is_dir() and verify(out_dir, recipe) is None:
            return out_dir
        raise MedwbError(f"--out '{out_dir}' already exists and is not this demo model: "
                         "choose another directory or pass --force to replace it")
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for name in MODEL_FILES + (MANIFEST,):
            shutil.copy2(src / name, tmp / name)
    return out_dir


# --- building ---------------------------------------------------------------------------
def _chat_example(tokenizer, case, task: str):
    """A training example; for diagnosis the first answer line (初步诊断：X) is the key."""
    from medwb.training import Example

    prompt_text = prompts.render_chat([{"role": "user", "content": corpus.task_prompt(case, task)}])
    answer = corpus.diagnosis_target(case) if task == "diagnosis" else corpus.discharge_target(case)
    prompt_ids = tokenizer(prompt_text)["input_ids"]  # starts with <s>
    answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    key = 0
    if task == "diagnosis":
        # Lines are separate pre-tokens, so the first line's tokens prefix the answer's.
        key = len(tokenizer(answer.split("\n", 1)[0], add_special_tokens=False)["input_ids"])
    return Example(prompt_ids, answer_ids, key)


def build(out_dir: Path, recipe: dict = RECIPE, progress: bool = True, log=print) -> dict:
    """Generate the corpus, train tokenizer and model, evaluate, write ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from medwb import tokenizer as tok_mod
    from medwb import training

    check_shape(recipe["model"])
    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    heldout = corpus.heldout_cases(recipe["heldout"]["cases_per_disease"], recipe["heldout"]["seed"])
    train_cases = corpus.train_cases(recipe["corpus"]["train_cases_per_disease"],
                                     recipe["corpus"]["seed"], heldout)
    log(f"corpus: {len(train_cases)} training cases, {len(heldout)} held-out cases "
        f"({len(corpus.load_knowledge())} diseases), disjoint by case signature")

    texts = [corpus.task_prompt(c, t) + "\n" + (corpus.diagnosis_target(c) if t == "diagnosis"
                                               else corpus.discharge_target(c))
             for c in train_cases for t in corpus.TASKS]
    texts += [prompts.render_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])]
    tk = recipe["tokenizer"]
    raw_tok = tok_mod.train_tokenizer(texts, tk["vocab_size"], tk["min_frequency"])

    with atomic_dir(out_dir, overwrite=True) as tmp:
        tok_mod.save_tokenizer(raw_tok, tmp, recipe["model"]["max_position_embeddings"])
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp)
        every = recipe["corpus"]["discharge_every"]
        examples = [_chat_example(tokenizer, c, "diagnosis") for c in train_cases]
        examples += [_chat_example(tokenizer, c, "discharge") for c in train_cases[::every]]
        n_tokens = sum(e.length for e in examples)
        log(f"tokenizer: {len(tokenizer)} tokens; {len(examples)} training examples, "
            f"{n_tokens} tokens (mean {n_tokens / len(examples):.0f} per example)")

        m = recipe["model"]
        config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, hidden_act="silu", **m)
        torch.manual_seed(recipe["train"]["seed"])
        model = LlamaForCausalLM(config)
        tr = recipe["train"]
        if tr["zero_init_residual"]:
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.o_proj.weight.zero_()
                    layer.mlp.down_proj.weight.zero_()
        bf16 = tr["bf16_autocast"] and _cpu_has_bf16()
        train_log = training.train(
            model, examples, steps=tr["steps"], lr=tr["lr"], warmup_steps=tr["warmup_steps"],
            weight_decay=tr["weight_decay"], batch_tokens=tr["batch_tokens"], seed=tr["seed"],
            pad_id=tokenizer.pad_token_id, bf16_autocast=bf16, max_seconds=tr["max_seconds"],
            loss_on_prompt=tr["loss_on_prompt"], key_weight=tr["key_weight"], progress=progress)
        train_log["bf16_autocast_used"] = bf16
        if train_log["stopped_early"]:
            log(f"warning: training hit its {tr['max_seconds']} s cap after "
                f"{train_log['steps_done']}/{tr['steps']} steps; this build is not the "
                "deterministic one (machine slower or busier than planned)")
        save_checkpoint(model, tmp)

        ev = recipe["eval"]
        quality = evaluate_model(tmp, heldout[:ev["cases"]] if ev["cases"] else heldout,
                                 ev["max_new_tokens"], progress=progress)
        files = {name: _sha256(tmp / name) for name in MODEL_FILES}
        manifest = {
            "name": recipe["name"], "recipe_hash": recipe_hash(recipe), "recipe": recipe,
            "files": files, "quality": quality, "training": train_log,
            "parameters": sum(p.numel() for p in model.parameters()),
            "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - started, 1),
            "python": sys.version.split()[0], "machine": platform.machine(),
            "torch": torch.__version__,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    log(f"demo model written to {out_dir} in {manifest['build_seconds']:.0f} s "
        f"({manifest['parameters'] / 1e6:.2f} M parameters); "
        f"diagnosis top-3 {quality['diagnosis_top3_rate']:.1%}, "
        f"discharge sections {quality['discharge_sections_rate']:.1%}")
    return manifest


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def save_checkpoint(model, out_dir: Path, with_bin: bool = True) -> None:
    """safetensors for transformers/optimum, pytorch_model.bin for llm-convert; config
    written so that transformers 4.31 (bigdl env) reads it the same way as 5.x."""
    import torch

    model.save_pretrained(out_dir)
    if with_bin:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, out_dir / "pytorch_model.bin")
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["rope_theta"] = model.config.rope_theta if hasattr(model.config, "rope_theta") else \
        RECIPE["model"]["rope_theta"]
    cfg["torch_dtype"] = "float32"
    cfg.setdefault("pretraining_tp", 1)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


# --- quality ----------------------------------------------------------------------------
def evaluate_model(model_dir: Path, cases=None, max_new_tokens: dict | None = None,
                   progress: bool = True) -> dict:
    """Greedy FP32 on the held-out cases: diagnosis top-3 hit rate and discharge-record
    section completeness (the two figures the foundation issue asks for)."""
    from medwb.backends.pytorch import PyTorchBackend

    cases = cases if cases is not None else corpus.heldout_cases()
    backend = PyTorchBackend.load(model_dir, "float32")
    vocab = corpus.diagnosis_vocabulary()
    result = {"n_cases": len(cases)}
    t0 = time.perf_counter()
    budgets = max_new_tokens or RECIPE["eval"]["max_new_tokens"]
    for task in corpus.TASKS:
        budget = budgets[task]
        chat = [prompts.render_chat([{"role": "user", "content": corpus.task_prompt(c, task)}])
                for c in cases]
        outputs = backend.generate(chat, max_new_tokens=budget, batch_size=24)
        if task == "diagnosis":
            hits = [evaluate.diagnosis_top3_hit(o, c.disease, vocab) for o, c in zip(outputs, cases)]
            result["diagnosis_top3_rate"] = round(evaluate.rate(hits), 4)
            result["diagnosis_primary_rate"] = round(evaluate.rate(
                (evaluate.named_diagnoses(o, vocab)[:1] == [c.disease]) for o, c in zip(outputs, cases)), 4)
        else:
            result["discharge_sections_rate"] = round(evaluate.rate(
                evaluate.has_all_sections(o) for o in outputs), 4)
        result[f"{task}_example"] = outputs[0]
    result["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def format_quality(q: dict) -> str:
    def line(label, key):
        ok = "meets" if q[key] >= TARGETS[key] else "BELOW"
        return f"  {label}: {q[key]:.1%} of {q['n_cases']} held-out cases ({ok} target {TARGETS[key]:.0%})"
    return "\n".join(["demo model quality (greedy FP32, held-out cases):",
                      line("diagnosis: true diagnosis among the first three named", "diagnosis_top3_rate"),
                      line("discharge: all five section headings present", "discharge_sections_rate")])
