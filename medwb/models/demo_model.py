"""The embedded demo model: shipped in the repository, rebuilt from its recipe on request.

No model hub is reachable in hospitals or here, so the project trains its own small
Llama model on the synthetic corpus (``medwb.tasks.corpus``) and **ships it** in
``data/demo-model/`` (safetensors, tokenizer, config and a manifest with checksums): a
fresh machine never trains. Its shape is chosen so that every route can take it:

- Llama architecture, full multi-head attention (llm-cli rejects grouped-query attention);
- 26 layers (llm-cli's llama loader accepts only 26/32/40/60/80);
- every Linear input a multiple of 64 (bigdl's low-bit kernels require it);
- intermediate size = llama's ``multiple_of`` formula, which llm-convert's converter
  needs to recover ``n_mult``.

``ensure()`` gives the folder every route loads: the shipped files, checked against their
checksums, plus the files derived from them once into the cache (``pytorch_model.bin``,
which llm-convert reads). ``rebuild()`` trains the recipe (a fixed number of steps, no
clock deciding the result) for a hospital that edits the knowledge table; a build below
the quality targets is refused and nothing of it is kept. The recipe's *data hash*
covers the recipe and the exact training and held-out texts, so a model built from other
data is never taken for this one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path

from medwb.tasks import corpus, prompts
from medwb.errors import MedwbError
from medwb.paths import DATA_DIR, PACKAGE_DIR, atomic_dir, cache_dir, sha256_file, write_json_atomic, write_text_atomic

SHIPPED_DIR = DATA_DIR / "demo-model"
MANIFEST = "medwb_manifest.json"
# Committed to git (a few MB) ...
SHIPPED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json")
# ... and derived from them into the cache, once per machine (llm-convert reads only .bin).
DERIVED_FILES = ("pytorch_model.bin",)
MODEL_FILES = SHIPPED_FILES + DERIVED_FILES

RECIPE = {
    "name": "medwb-demo-llama",
    # Every training case gives a diagnosis example, every `discharge_every`-th one also a
    # discharge example: choosing the diagnosis is the harder skill (the discharge record
    # is mostly reorganised copying). A share `p_varied` is written in the varied style
    # (abbreviations, free-text 病历特点, long multi-day records: see medwb.tasks.corpus).
    "corpus": {"train_cases_per_disease": 160, "seed": "medwb-train-v1", "discharge_every": 2,
               "p_varied": 0.4},
    "tokenizer": {"vocab_size": 4096, "min_frequency": 2},
    "model": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 26,
              "num_attention_heads": 2, "num_key_value_heads": 2,
              "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5},
    # zero_init_residual: every block starts as the identity (attention and MLP output
    # projections zeroed), so the 26-layer stack first trains like a shallow one; in a
    # same-budget comparison here the diagnosis skill emerged only with it.
    # threads: fixed, because the thread count changes the float summation order and so
    # the weights; 1 because a second OpenMP thread collapses (0.20 vs 2.16 steps/s here)
    # as soon as another process takes the other core, while one thread keeps ~1.6
    # steps/s either way (the build measures both and stores them in the manifest). The
    # whole build averaged 1.09 steps/s (80 minutes): long records make longer steps.
    "train": {"seed": 0, "steps": 5200, "lr": 3e-3, "warmup_steps": 60, "weight_decay": 0.01,
              "batch_tokens": 2048, "loss_on_prompt": True, "key_weight": 20.0,
              "zero_init_residual": True, "bf16_autocast": True, "threads": 1},
    # Greedy budgets for the held-out evaluation (cases: 0 = all of them).
    "eval": {"cases": 0, "max_new_tokens": {"diagnosis": 200, "discharge": 560}},
    # The quality gate, on the standard held-out set (greedy FP32). A build below any of
    # them is refused. The varied set's figures are measured and reported beside them.
    # Grounding is gated at a regression floor, not at its goal (GOALS): this 1.9 M model
    # names the right diagnosis and writes every section, but recalls plausible findings
    # from training for about half of those it writes instead of copying the case's own.
    "targets": {"diagnosis_primary_rate": 0.90, "diagnosis_top3_rate": 0.97,
                "discharge_sections_rate": 0.98, "diagnosis_grounding_rate": 0.45,
                "discharge_grounding_rate": 0.45},
    # Stage 2: continued training of the stage-1 model (everything above) on the
    # evaluation set's other task families (medwb.tasks.evalset), with the two workflows
    # replayed so that their skills are kept; the gate above applies again, plus a floor
    # per evaluation task (its official main metric on the bundled test set, greedy FP32)
    # that says the task was learned at all: clearly above chance, far below perfect.
    # A separate stage because the stage-1 build takes ~80 minutes here: a rebuild reuses
    # a verified stage-1 build (the shipped one's predecessor is kept in the manifest).
    "continued": {"seed": "medwb-continued-v1", "steps": 1800, "lr": 1e-3, "warmup_steps": 50,
                  "tasks": {"MedWB-NER": 2400, "MedWB-CDN": 1200, "MedWB-QIC": 2400,
                            "MedWB-STS": 2400, "MedWB-MRG": 1600},
                  "replay": {"diagnosis": 2400, "discharge": 1000},
                  "max_new_tokens": {"MedWB-NER": 96, "MedWB-CDN": 32, "MedWB-QIC": 16, "MedWB-STS": 8,
                                     "MedWB-MRG": 320, "MedWB-DDx": 200, "MedWB-DSR": 560},
                  "task_floors": {"MedWB-NER": 0.30, "MedWB-CDN": 0.30, "MedWB-QIC": 0.30,
                                  "MedWB-STS": 0.55, "MedWB-MRG": 0.30, "MedWB-DDx": 0.80,
                                  "MedWB-DSR": 0.50}},
}
# The next demo model, built across working sessions (`medwb demo-model --rebuild --recipe
# candidate --pause-after HOURS`; the training state resumes exactly) until its gate passes
# and it replaces RECIPE. Measured on 2026-12-06 (AMD EPYC AVX-512, 1 thread; the figures in
# docs/demo-model.md): a finished model does not learn to copy a value found by its name
# (the shipped one, continued 600 steps on the copy drill, medwb.tasks.copy_drill: 1 of 156
# held-out values), nor does a build that mixes the drill into the corpus by step 2,000
# (0 of 146; ~300 of its steps were drill batches); a build on the drill alone does, after a
# plateau: 128 wide with 4 heads, 0-1% of held-out values at 250-750 steps, 11.5% at 1,000,
# 49% at 1,250. Hence a curriculum: 2,000 steps of the drill alone, then the shipped recipe's
# 5,200 on the corpus with the drill kept in it. 128 wide with 4 heads of 32 (6.6 M
# parameters) steps at 2.1x the shipped shape's cost (0.63 vs 1.34 steps/s on the corpus),
# not the 4x once estimated: 26 small layers are overhead-bound. 26 MB in FP32, so it ships
# in 16 bits (SHIP_LIMIT_BYTES).
CANDIDATE = json.loads(json.dumps(RECIPE))
CANDIDATE["name"] = "medwb-demo-llama-128"
CANDIDATE["corpus"]["copy_drill"] = {"examples": 8000, "seed": "medwb-copy-v1"}
CANDIDATE["model"].update(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=4)
CANDIDATE["train"].update(steps=7200, copy_first_steps=2000)
# Stage 2 also trains on the workflows in the layouts doctors paste (medwb.tasks.layouts):
# the shipped model kept to its task on 72% / 42% of the doctor-written cases. (Stage 1's
# data hash leaves "continued" out, so this stage can change while stage 1 trains.)
CANDIDATE["continued"]["layouts"] = {"examples": {"diagnosis": 1600, "discharge": 1000}, "seed": "medwb-layouts-v1"}
CANDIDATE["continued"]["copy_drill"] = {"examples": 2000, "seed": "medwb-copy-continued-v1"}
# Its first stage-2 build (1,800 steps, NER 2,400 examples: 10.8% of 3.9 M tokens, about one
# pass) was refused on MedWB-NER 0.270 < 0.30; the shipped model's stage 2 saw ~0.55 M NER
# tokens (1.3 passes), this one 0.42 M. So more NER (and MRG, the other long-answer task),
# and steps for one pass over the larger set.
CANDIDATE["continued"]["tasks"].update({"MedWB-NER": 3600, "MedWB-MRG": 2000})
CANDIDATE["continued"]["steps"] = 2100
# The diagnosis replay lists each case's signs and tests in another order: the 诊断依据 then
# cannot be recited in the knowledge table's order. A 400-step continuation of stage 1 this
# way grounded 86.5% of the diagnosis basis vs 77.2% with the cases as generated (first 24
# standard cases, AMD EPYC AVX2; docs/demo-model.md); discharge did not move, so only diagnosis.
CANDIDATE["continued"]["replay_shuffled"] = {"diagnosis": ["signs", "tests"]}
# The candidate's stage 1 again, with the two levers its measurements left (docs/demo-model.md,
# #36). Its discharge drafts write the knowledge table's sentences from memory, steered by the
# case (56 of 60 ungrounded findings were sentences the table lists for the case's disease):
# every sentence it had to copy was one it had memorized, so training could not tell copying
# from recalling. Here every discharge example's record is *novel* (medwb.tasks.novel_text:
# each sentence recombined from clauses of different diseases, every number redrawn), so its
# record is right only when copied, from the first corpus step on, after the same drill
# (a 400-step continuation of the finished stage 1 on such records learned the generator
# instead: 35% discharge grounding; this asks whether a build that never memorized the table's
# discharge sentences learns to copy them). The diagnosis examples list each case's signs and
# tests in a random order, which grounded the 诊断依据 better in every continuation measured
# (86.5% vs 77.2%). Stage 2 is the candidate's. Measured and stopped at step 3,522 (AMD EPYC
# AVX2, FP32): diagnosis basis ahead of the candidate at the same step (56-59% vs 37.5%),
# discharge grounding flat at 11% (candidate: 32%): it copies digits and continues clauses, but
# picks the next clause right only 41-46% of the time, teacher-forced (docs/demo-model.md).
COPY_CANDIDATE = json.loads(json.dumps(CANDIDATE))
COPY_CANDIDATE["name"] = "medwb-demo-llama-128-copy"
COPY_CANDIDATE["corpus"]["novel_discharge"] = {"seed": "medwb-novel-v1"}
COPY_CANDIDATE["corpus"]["shuffled"] = {"diagnosis": ["signs", "tests"], "seed": "medwb-shuffle-v1"}
RECIPES = {"shipped": RECIPE, "candidate": CANDIDATE, "candidate-copy": COPY_CANDIDATE}


def on_device(recipe: dict, device: str) -> dict:
    """``recipe`` trained on ``device`` ("cpu" or "cuda"). A GPU build is another recipe:
    its float arithmetic differs, so it gets its own data hash (build folder, training
    state, kept copy) and is never taken for the CPU build, which stays the reproducible
    definition (issue #36)."""
    if device == "cpu":
        return recipe
    return dict(recipe, train=dict(recipe["train"], device=device))


# Label tasks: every answer token carries the decision (loss weight key_weight).
LABEL_TASKS = ("MedWB-CDN", "MedWB-QIC", "MedWB-STS")
# Where the figures should be (the reproducibility issue's targets); shown beside the
# gate. Only grounding is still below: see docs/demo-model.md.
GOALS = {"diagnosis_grounding_rate": 0.90, "discharge_grounding_rate": 0.90}
TARGET_LABELS = {
    "diagnosis_primary_rate": "diagnosis: true diagnosis named first",
    "diagnosis_top3_rate": "diagnosis: true diagnosis among the first three named",
    "discharge_sections_rate": "discharge: all five section headings present",
    "diagnosis_grounding_rate": "diagnosis: findings in 诊断依据 that occur in the case",
    "discharge_grounding_rate": "discharge: findings in the record that occur in the case",
}


# The repository ships the model's weights in FP32 up to this size, in FP16 above it (the
# candidate's 6.6 M parameters are 26 MB in FP32). The gate measures the FP16-rounded
# weights, and every route reads them widened back to FP32 exactly (``_derive``), so "the
# FP32 model" is one set of numbers everywhere.
SHIP_LIMIT_BYTES = 20_000_000


def ship_dtype(parameters: int) -> str:
    """``float32``, or ``float16`` for a model whose FP32 weights exceed ``SHIP_LIMIT_BYTES``."""
    return "float32" if 4 * parameters <= SHIP_LIMIT_BYTES else "float16"


def round_to_ship_dtype(model) -> str:
    """Round ``model``'s weights in place to the dtype they ship in (kept as FP32 tensors);
    the dtype's name."""
    import torch
    dtype = ship_dtype(sum(p.numel() for p in model.parameters()))
    if dtype == "float16":
        with torch.no_grad():
            for p in model.parameters():
                if p.abs().max() >= torch.finfo(torch.float16).max:
                    raise MedwbError("a demo model weight is beyond float16's range: it cannot ship in 16 bits")
                p.copy_(p.half().float())
    return dtype


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


# --- the data a recipe trains on ------------------------------------------------------
def training_cases(recipe: dict = RECIPE) -> tuple[list, list]:
    """(training cases, held-out cases of every shipped set), disjoint by signature."""
    heldout = corpus.all_heldout_cases()
    c = recipe["corpus"]
    return corpus.train_cases(c["train_cases_per_disease"], c["seed"], heldout,
                              p_varied=c.get("p_varied", 0.0)), heldout


def training_texts(recipe: dict = RECIPE) -> list[tuple[str, str]]:
    """(chat prompt, answer) of every training example, in order."""
    import random
    cases, _ = training_cases(recipe)
    spec = recipe["corpus"]
    every = spec["discharge_every"]
    dx_cases, dc_cases = cases, cases[::every]
    if spec.get("shuffled"):  # these lists of each diagnosis case in another order
        rng = random.Random(spec["shuffled"]["seed"])
        dx_cases = [_shuffled(case, spec["shuffled"]["diagnosis"], rng) for case in dx_cases]
    if spec.get("novel_discharge"):  # records that can only be copied (tasks.novel_text)
        from medwb.tasks import novel_text
        dc_cases = novel_text.novel_cases(dc_cases, spec["novel_discharge"]["seed"])
    pairs = [(c, "diagnosis") for c in dx_cases] + [(c, "discharge") for c in dc_cases]
    texts = [(prompts.user_turn(corpus.task_prompt(c, t)),
              corpus.diagnosis_target(c) if t == "diagnosis" else corpus.discharge_target(c))
             for c, t in pairs]
    drill = recipe["corpus"].get("copy_drill")
    if drill:
        from medwb.tasks import copy_drill
        texts += [(prompts.user_turn(p), a)
                  for p, a in copy_drill.examples(drill["examples"], drill["seed"])]
    return texts


def _shuffled(case: corpus.Case, parts, rng) -> corpus.Case:
    """``case`` with each of its lists ``parts`` (e.g. signs, tests) in a random order."""
    return dataclasses.replace(case, **{p: tuple(rng.sample(getattr(case, p), len(getattr(case, p)))) for p in parts})


def stage1(recipe: dict = RECIPE) -> dict:
    """The recipe without its continued-training stage."""
    return {k: v for k, v in recipe.items() if k != "continued"}


def continued_texts(recipe: dict = RECIPE) -> list[tuple[str, str, str]]:
    """(task, chat prompt, answer) of every stage-2 example, in order: the evaluation
    tasks drawn from the training cases, plus a replay of the workflows' examples."""
    import random

    from medwb.tasks import evalset
    c = recipe["continued"]
    cases, _ = training_cases(recipe)
    out = [(task, prompts.user_turn(x), y)
           for task, x, y in evalset.training_pairs(cases, c["tasks"], c["seed"])]
    rng = random.Random(c["seed"] + "/replay")
    every = recipe["corpus"]["discharge_every"]
    for task, n in c["replay"].items():
        pool = [(cs, task) for cs in (cases if task == "diagnosis" else cases[::every])]
        for case, t in rng.sample(pool, min(n, len(pool))):
            case = _shuffled(case, c.get("replay_shuffled", {}).get(t, ()), rng)  # its findings in another order
            answer = corpus.diagnosis_target(case) if t == "diagnosis" else corpus.discharge_target(case)
            out.append((t, prompts.user_turn(corpus.task_prompt(case, t)), answer))
    if c.get("layouts"):  # the workflows again, in the layouts doctors paste (tasks.layouts)
        from medwb.tasks import layouts
        out += [(t, prompts.user_turn(p), a) for t, p, a in layouts.training_pairs(cases, c["layouts"]["examples"],
                                                                       c["layouts"]["seed"])]
    if c.get("copy_drill"):  # stage 1's copy drill, kept up (tasks.copy_drill)
        from medwb.tasks import copy_drill
        out += [("copy", prompts.user_turn(p), a) for p, a in copy_drill.examples(c["copy_drill"]["examples"],
                                                                      c["copy_drill"]["seed"])]
    rng.shuffle(out)
    return out


@lru_cache(maxsize=4)
def _data_hash(recipe_json: str) -> str:
    recipe = json.loads(recipe_json)
    h = hashlib.sha256(recipe_json.encode())
    for prompt, answer in training_texts(recipe):
        h.update(prompt.encode())
        h.update(answer.encode())
    for case in corpus.all_heldout_cases():  # a change of the evaluation set counts too
        h.update(case.signature().encode())
    if "continued" in recipe:
        from medwb.tasks import evalset
        for task, prompt, answer in continued_texts(recipe):
            h.update((task + prompt + answer).encode())
        for record in evalset.test_records():
            h.update(json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:16]


def data_hash(recipe: dict = RECIPE, memo: bool = True) -> str:
    """Hash of the recipe and the exact texts it trains on: code can move or be tidied
    without invalidating the shipped model, but any change of what it learns from does.

    Generating those texts takes seconds (3.4 s, AMD EPYC with AVX2), and every process that
    resolves the demo model needs the hash: with ``memo`` it is kept in the cache under the
    digest of everything the texts are made from (the recipe, this Python, MedWB's code and
    the data files the generators read), so it is computed again whenever any of them changes."""
    recipe_json = json.dumps(recipe, sort_keys=True)
    if not memo:
        return _data_hash.__wrapped__(recipe_json)
    path = cache_dir() / "data-hash" / f"{_inputs_digest(recipe_json)}.txt"
    try:
        kept = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        kept = ""
    if len(kept) == 16 and all(c in "0123456789abcdef" for c in kept):
        return kept
    value = _data_hash(recipe_json)
    with contextlib.suppress(OSError):  # a read-only cache only costs the seconds again
        write_text_atomic(path, value + "\n")
    return value


@lru_cache(maxsize=4)
def _inputs_digest(recipe_json: str) -> str:
    """Digest of what the training and held-out texts are generated from."""
    import sys
    h = hashlib.sha256(f"{recipe_json}\n{sys.version}\n".encode())
    for root, pattern in ((PACKAGE_DIR, "*.py"), (PACKAGE_DIR / "tasks" / "knowledge", "*"),
                          (DATA_DIR / "heldout", "*"), (DATA_DIR / "eval", "*")):
        for path in sorted(root.rglob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(f"{root.name}/{path.relative_to(root)}".encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def read_manifest(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8"))


def verify(model_dir: Path, derived: bool = True) -> str | None:
    """None if every file the manifest lists (with ``derived``: the derived ones too) is
    present and matches its checksum; else why not."""
    manifest_path = Path(model_dir) / MANIFEST
    if not manifest_path.exists():
        return "no manifest"
    try:
        manifest = read_manifest(model_dir)
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    files = dict(manifest.get("files", {}))
    if set(files) != set(SHIPPED_FILES):
        return "manifest lists the wrong files"
    if derived:
        extra = manifest.get("derived", {})
        if not set(DERIVED_FILES) <= set(extra):
            return "derived files are not listed"
        files.update(extra)  # a 16-bit shipped model's safetensors and config, widened to FP32
    for name, digest in files.items():
        path = Path(model_dir) / name
        if not path.exists():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its checksum"
    return None


def builds_dir() -> Path:
    """Where `rebuild()` keeps models built on this machine (by data hash)."""
    return cache_dir() / "demo-model-builds"


def source(recipe: dict = RECIPE, log=print) -> Path:
    """The model folder ``ensure()`` derives from: the shipped model when it was built
    from this recipe's data, else a verified local rebuild of it, else the shipped one
    with a warning (the knowledge table or recipe changed since it was built)."""
    problem = verify(SHIPPED_DIR, derived=False)
    if problem:
        raise MedwbError(f"the shipped demo model in {SHIPPED_DIR} is damaged ({problem}): restore it "
                         "with `git checkout -- data/demo-model` or run `medwb demo-model --rebuild`")
    wanted = data_hash(recipe)
    if read_manifest(SHIPPED_DIR).get("data_hash") == wanted:
        return SHIPPED_DIR
    local = builds_dir() / wanted
    if local.exists() and verify(local, derived=False) is None:
        return local
    log("warning: the knowledge table or the recipe changed since the shipped demo model was "
        "built, so it has not learned the change: run `medwb demo-model --rebuild` "
        "(trains on this machine); using the shipped model meanwhile")
    return SHIPPED_DIR


def derived_path(src: Path) -> Path:
    """Cache folder of the loadable model derived from ``src`` (keyed by its checksums)."""
    key = hashlib.sha256(json.dumps(read_manifest(src)["files"], sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "demo-model" / key


def ensure(recipe: dict = RECIPE, log=print) -> Path:
    """The demo model folder every route loads: the shipped (or locally rebuilt) files plus
    ``pytorch_model.bin``, derived once into the cache. Never trains.

    A lock file serialises concurrent callers (e.g. `make run` and `make test` started
    together); a corrupt or partial cache entry is derived again, never trusted.
    """
    from filelock import FileLock

    src = source(recipe, log=log)
    path = derived_path(src)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            problem = verify(path)
            if problem is None:
                return path
            log(f"cached demo model at {path} is not usable ({problem}): deriving it again")
            shutil.rmtree(path)
        _derive(src, path)
    return path


def _derive(src: Path, path: Path) -> None:
    """Copy the model files and write ``pytorch_model.bin`` from the safetensors."""
    import torch
    from safetensors.torch import load_file, save_file

    with atomic_dir(path, overwrite=True) as tmp:
        for name in SHIPPED_FILES:
            shutil.copyfile(src / name, tmp / name)
        manifest = read_manifest(src)
        if verify_copy := [n for n in SHIPPED_FILES if sha256_file(tmp / n) != manifest["files"][n]]:
            raise MedwbError(f"copying the demo model changed {', '.join(verify_copy)}: disk problem?")
        state = {k: v.contiguous() for k, v in load_file(tmp / "model.safetensors").items()}
        widened = []
        if any(v.dtype != torch.float32 for v in state.values()):
            # Shipped in 16 bits (SHIP_LIMIT_BYTES): every route reads it widened, exactly.
            state = {k: v.float() for k, v in state.items()}
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            _write_config(tmp / "config.json", json.loads((tmp / "config.json").read_text(encoding="utf-8")),
                          "float32")
            widened = ["model.safetensors", "config.json"]
        torch.save(state, tmp / "pytorch_model.bin")
        manifest["derived"] = {name: sha256_file(tmp / name) for name in (*DERIVED_FILES, *widened)}
        manifest["derived_from"] = str(src)
        write_json_atomic(tmp / MANIFEST, manifest)


def export(out_dir: Path, force: bool = False, recipe: dict = RECIPE, log=print) -> Path:
    """Copy the loadable demo model (with ``pytorch_model.bin``) to ``out_dir`` atomically."""
    src = ensure(recipe=recipe, log=log)
    return copy_model(src, out_dir, force, MODEL_FILES, "--out")


def copy_model(src: Path, out_dir, force: bool, names, parameter: str) -> Path:
    from medwb.paths import check_writable_dir
    out_dir = check_writable_dir(Path(out_dir).expanduser().resolve(), parameter)
    if out_dir == Path(src).resolve():
        return out_dir
    if out_dir.exists() and not force:
        if out_dir.is_dir() and verify(out_dir, derived=set(names) == set(MODEL_FILES)) is None \
                and read_manifest(out_dir)["files"] == read_manifest(src)["files"]:
            return out_dir
        raise MedwbError(f"{parameter} '{out_dir}' already exists and is not this demo model: "
                         "choose another directory or pass --force to replace it")
    try:
        with atomic_dir(out_dir, overwrite=True) as tmp:
            for name in names:
                shutil.copyfile(src / name, tmp / name)
            manifest = read_manifest(src)
            if set(names) != set(MODEL_FILES):
                manifest.pop("derived", None)
                manifest.pop("derived_from", None)
            write_json_atomic(tmp / MANIFEST, manifest)
    except OSError as e:
        raise MedwbError(f"{parameter} '{out_dir}' cannot be written ({e.strerror}): choose a "
                         "writable directory") from None
    return out_dir


def gate(quality: dict, targets: dict) -> list[str]:
    """The targets ``quality`` misses, as 'label: measured (target)' strings."""
    return [f"{TARGET_LABELS.get(k, k)}: {quality.get(k, 0):.1%} (target {t:.0%})"
            for k, t in targets.items() if quality.get(k, 0) < t]


def save_checkpoint(model, out_dir: Path, with_bin: bool = True, dtype: str = "float32") -> None:
    """safetensors for transformers/optimum, pytorch_model.bin for llm-convert; config
    written so that transformers 4.31 (bigdl env) reads it the same way as 5.x. With
    ``dtype`` float16: the safetensors in 16 bits (the shipped form; no .bin, derived later)."""
    import copy

    import torch

    if dtype == "float16":
        copy.deepcopy(model).half().save_pretrained(out_dir)
        _complete_config(model, out_dir, "float16")
        return
    model.save_pretrained(out_dir)
    if with_bin:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, out_dir / "pytorch_model.bin")
    _complete_config(model, out_dir, "float32")


def write_config(model, out_dir: Path, dtype: str) -> None:
    """config.json (and generation_config.json) of a model whose weights were written
    without save_pretrained (random_weights' shards), in ``dtype``."""
    model.config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    _complete_config(model, out_dir, dtype)


def _complete_config(model, out_dir: Path, dtype: str) -> None:
    """What config.json must also say so that transformers 4.31 (bigdl env) and 4.47 (ipex
    env) read it as 5.x does, and converters find the class and the weights' dtype."""
    cfg_path = Path(out_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # save_pretrained names the class; config.save_pretrained alone does not (converters read it)
    cfg["architectures"] = [type(model).__name__]
    # transformers 5 keeps the base in rope_parameters; 4.31 (bigdl env) reads rope_theta.
    rope = getattr(model.config, "rope_parameters", None)
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    cfg["rope_theta"] = theta or getattr(model.config, "rope_theta", None) or RECIPE["model"]["rope_theta"]
    cfg.setdefault("pretraining_tp", 1)
    _write_config(cfg_path, cfg, dtype)


def _write_config(path: Path, cfg: dict, dtype: str) -> None:
    """config.json naming the weights' dtype, in the one format its checksum is taken of."""
    cfg["torch_dtype"] = cfg["dtype"] = dtype  # 4.x reads torch_dtype, 5.x dtype; export tools load in it
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


def _interval(q: dict, key: str) -> str:
    """The 95% Wilson interval of a figure: over cases for rates per answer, over findings
    for grounding (findings of one answer are not independent: read it as a lower bound
    on the width)."""
    from medwb.quality.intervals import wilson
    task = key.split("_", 1)[0]
    n = q.get(f"{task}_findings") if key.endswith("grounding_rate") else q.get("n_cases")
    if not n:
        return ""
    lo, hi = wilson(round(q[key] * n), n)
    return f"[{lo:.0%}, {hi:.0%}]"


def format_quality(q: dict, targets: dict | None = None) -> str:
    targets = RECIPE["targets"] if targets is None else targets
    lines = [f"demo model quality (greedy FP32; standard held-out set: {q['n_cases']} cases, "
             f"varied set: {q.get('varied', {}).get('n_cases', 0)} cases; 95% intervals):"]
    for key, label in TARGET_LABELS.items():
        if key not in q:
            continue
        t = targets.get(key)
        mark = "" if t is None else f" ({'meets' if q[key] >= t else 'BELOW'} target {t:.0%})"
        if key in GOALS and GOALS[key] != t:
            mark += f" ({'meets' if q[key] >= GOALS[key] else 'below'} the goal of {GOALS[key]:.0%})"
        varied = q.get("varied", {}).get(key)
        lines.append(f"  {label}: {q[key]:.1%} {_interval(q, key)}{mark}"
                     + (f"; varied style {varied:.1%} {_interval(q['varied'], key)}" if varied is not None else ""))
    if q.get("tasks"):
        floors = RECIPE.get("continued", {}).get("task_floors", {})
        lines.append("evaluation set (data/eval, official PromptCBLUE metrics, greedy FP32):")
        for task, r in q["tasks"].items():
            floor = f" (floor {floors[task]:.2f})" if task in floors else ""
            lines.append(f"  {task}: {r['metric']} {r['score']:.3f}{floor}, {r['parse_failures']} parse "
                         f"failures in {r['n']}")
    return "\n".join(lines)
