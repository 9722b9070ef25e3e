"""The demo model's training loop: supervised fine-tuning from scratch on the corpus.

Small on purpose (a few minutes on two cores):
- length-bucketed small batches: more, smaller steps learned faster per second than
  fewer large ones in a same-time comparison here;
- loss on prompt and answer tokens (also measured better than answer-only at equal time),
  with a higher weight on the few answer tokens that carry the key decision (the primary
  diagnosis is one token among hundreds otherwise);
- AdamW with warm-up and cosine decay; bf16 autocast where the CPU has native bf16 (it
  roughly halves step time here);
- a fixed number of steps on a fixed number of threads: the result never depends on
  how fast or busy the machine is (a wall-clock cap once let a busy machine ship a model
  trained for 18 of 680 steps). ``contention()`` measures what a busy core costs.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Example:
    """One chat example: prompt ids (from <s>), answer ids (to </s>), and how many leading
    answer tokens carry the key decision (their loss weight is ``key_weight``)."""
    prompt: list[int]
    answer: list[int]
    key_tokens: int = 0

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.answer)


def make_batches(examples: list[Example], batch_tokens: int,
                 rng: random.Random, indices=None) -> list[list[int]]:
    """Group example indices (all, or ``indices``) by length so that padded size stays
    under ``batch_tokens``.

    (Packing several examples per row was measured too: no faster here, since longer rows
    cost more attention, and it lets examples attend to each other.)
    """
    pool = range(len(examples)) if indices is None else indices
    order = sorted(pool, key=lambda i: (examples[i].length, rng.random()))
    batches, current, longest = [], [], 0
    for i in order:
        n = examples[i].length
        if current and max(longest, n) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], batch: list[int], pad_id: int, loss_on_prompt: bool,
            key_weight: float):
    """Right-padded ids, attention mask, labels and per-token loss weights."""
    import torch
    length = max(examples[i].length for i in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    weights = torch.zeros((len(batch), length), dtype=torch.float32)
    for row, i in enumerate(batch):
        ex = examples[i]
        seq = ex.prompt + ex.answer
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
        first = 1 if loss_on_prompt else len(ex.prompt)  # position 0 has no prediction
        weights[row, first:len(seq)] = 1.0
        a = len(ex.prompt)
        weights[row, a:a + ex.key_tokens] = key_weight
    return ids, mask, weights


def weighted_loss(logits, ids, weights):
    """Next-token cross-entropy, weighted per target token."""
    import torch.nn.functional as F
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                         ids[:, 1:].reshape(-1), reduction="none")
    w = weights[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum()


def lr_at(step: int, steps: int, lr: float, warmup: int, final_ratio: float = 0.1) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Paused(Exception):
    """Training stopped at a step boundary with its state saved (``pause_after_s``); run
    it again with the same state file to go on."""

    def __init__(self, step: int, steps: int, path):
        super().__init__(f"paused at step {step} of {steps}; state saved to {path}")
        self.step, self.steps, self.path = step, steps, path


def train(model, examples, *, steps: int, lr: float, warmup_steps: int, weight_decay: float,
          batch_tokens: int, seed: int, pad_id: int, bf16_autocast: bool, threads: int = 1,
          loss_on_prompt: bool = False, key_weight: float = 1.0, progress: bool = True,
          on_step=None, state_path=None, fingerprint: str = "", save_every: int = 200,
          pause_after_s: float | None = None, first: tuple[int, list[int]] | None = None,
          sitting: dict | None = None, device: str = "cpu") -> dict:
    """Train in place for exactly ``steps`` steps on ``threads`` threads; return a log
    (seconds, step rate, tokens, loss history).

    With ``state_path``, the whole training state (weights, optimizer moments, the batch
    order still to come, the random state, the log) is saved there every ``save_every``
    steps and read back on the next call, so a build that outlives a working session goes
    on where it stopped and ends with exactly the weights of an uninterrupted one (a test
    checks it). ``fingerprint`` names the data and recipe: a state saved for others is
    refused, never continued. ``pause_after_s``: save and raise ``Paused`` at the first
    step boundary after that many seconds (when to stop is the clock's; what is learned
    never is). ``first`` = (k, indices): a curriculum, the first k steps drawn from those
    examples only, the rest from all of them. ``sitting``: what the caller records about
    this machine (its CPU); the log's ``sittings`` lists every sitting's steps, seconds and
    precision, since one continued on a CPU of another kind (BF16 autocast there, FP32 here)
    does not end with the weights of an uninterrupted build on either. ``device``: "cuda"
    trains on a GPU (BF16 autocast there when ``bf16_autocast``); the model is on the CPU
    again when this returns, so callers save and evaluate it as they do a CPU build."""
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(threads)
    model.to(device)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                            weight_decay=weight_decay)
    model.train()
    batches: list[list[int]] = []
    history, tokens_seen, start = [], 0, time.perf_counter()
    running, resumed, before = None, 0, 0.0
    sittings: list[dict] = []
    if state_path is not None and Path(state_path).exists():
        state = load_state(state_path, fingerprint, threads)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])  # moments follow the parameters' device
        rng.setstate(state["rng"])
        batches, history, tokens_seen = state["batches"], state["history"], state["tokens_seen"]
        running, resumed, before = state["running"], state["step"], state["seconds"]
        # States saved before sittings were recorded: their steps' precision is unknown.
        sittings = state.get("sittings") or [{"from_step": 0, "to_step": resumed, "bf16_autocast": None}]
    bar = tqdm(range(resumed, steps), desc="training demo model", unit="step", disable=not progress,
               initial=resumed, total=steps)
    switch, subset = first if first else (0, None)

    def this_sitting(done: int) -> list[dict]:
        return sittings + [{"from_step": resumed, "to_step": done, "bf16_autocast": bf16_autocast,
                            "seconds": round(time.perf_counter() - start, 1), "device": device,
                            **(sitting or {})}]

    def save(done: int) -> None:
        save_state(state_path, {
            "fingerprint": fingerprint, "threads": threads, "step": done, "steps": steps,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng.getstate(),
            "batches": batches, "history": history, "tokens_seen": tokens_seen, "running": running,
            "seconds": before + time.perf_counter() - start, "sittings": this_sitting(done)})

    for step in bar:
        pause = pause_after_s is not None and time.perf_counter() - start >= pause_after_s
        if state_path is not None and step > resumed and (pause or step % save_every == 0):
            save(step)
            if pause:
                bar.close()
                raise Paused(step, steps, state_path)
        if step == switch:  # the curriculum's first part ends: the rest of its epoch is dropped
            batches = []
        if not batches:
            batches = make_batches(examples, batch_tokens, rng, subset if step < switch else None)
        ids, mask, weights = (t.to(device) for t in collate(examples, batches.pop(), pad_id,
                                                             loss_on_prompt, key_weight))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_steps)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16_autocast):
            logits = model(input_ids=ids, attention_mask=mask).logits
        loss = weighted_loss(logits, ids, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens_seen += int(mask.sum())
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        if step % 10 == 0 or step == steps - 1:
            history.append([step, round(value, 4)])
            bar.set_postfix(loss=f"{running:.3f}")
        if on_step is not None:
            on_step(step, model)
    bar.close()
    model.to("cpu")
    model.eval()
    seconds = before + time.perf_counter() - start
    log = {"steps": steps, "threads": threads, "seconds": round(seconds, 1),
           "steps_per_s": round(steps / seconds, 3) if seconds else None,
           "tokens_seen": tokens_seen, "final_loss": round(running, 4) if running is not None else None,
           "loss_history": history, "sittings": this_sitting(steps)}
    if resumed:
        log["resumed_at"] = resumed  # seconds: all sittings together
    return log


def save_state(path, state: dict) -> None:
    """Write a training state whole or not at all (``paths.atomic_file``)."""
    import torch

    from medwb.paths import atomic_file
    with atomic_file(Path(path)) as f:
        torch.save(state, f)


def load_state(path, fingerprint: str, threads: int) -> dict:
    """A saved training state, refused when it was saved for other data, recipe or thread
    count (continuing it would give a model that no recipe describes)."""
    import torch

    from medwb.errors import MedwbError
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")  # saved on a GPU, read anywhere
    except Exception as e:  # a truncated or foreign file: say which and how to start over
        raise MedwbError(f"training state {path} cannot be read ({e}): delete it to train from the start") from None
    if state.get("fingerprint") != fingerprint or state.get("threads") != threads:
        raise MedwbError(f"training state {path} was saved for other data or settings "
                         f"({state.get('fingerprint')}, {state.get('threads')} thread(s)); this build is "
                         f"{fingerprint} on {threads}: delete it to train from the start")
    return state


def contention(model, examples, thread_counts=(1, 2), steps: int = 16, warmup: int = 4,
               **train_kwargs) -> list[dict]:
    """Step rate of a throwaway copy of ``model`` alone and with one busy process beside
    it, per thread count: the record that justifies the recipe's thread setting."""
    import copy
    import subprocess
    import sys

    rows = []
    for threads in thread_counts:
        row = {"threads": threads}
        for label in ("alone", "busy_core"):
            busy = None
            if label == "busy_core":  # one single-threaded busy loop, as an editor or a search would be
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(0.5)
            try:
                stamps: list[float] = []
                kw = dict(train_kwargs, steps=warmup + steps, threads=threads, progress=False,
                          on_step=lambda step, _m, stamps=stamps: stamps.append(time.perf_counter()))
                train(copy.deepcopy(model), examples, **kw)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            # The first steps allocate and pick kernels: timed from the end of the warm-up.
            row[f"{label}_steps_per_s"] = round(steps / (stamps[-1] - stamps[warmup - 1]), 3)
        row["slowdown"] = round(row["alone_steps_per_s"] / row["busy_core_steps_per_s"], 2)
        rows.append(row)
    return rows
