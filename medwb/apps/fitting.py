"""Fitting a record into a model's context, shared by both workflows.

A prompt plus ``max_new_tokens`` must fit the model's context (models in one comparison may
have different tokenizers and contexts, so each worker fits its own copy). When the prompt is
too long, the workflow's *shortening steps* run in order, each as often as it helps, until it
fits: the diagnosis app cuts the end of its longest free-text field; the discharge app first
drops routine course notes and keeps the days that matter (``medwb.apps.discharge.record``).
A step returns None when it has nothing left to shorten; when every step is spent the record
does not fit and the message says what was kept whole and what to lower.
"""
from __future__ import annotations

import importlib
import math

from medwb.errors import MedwbError

CUT_MARK = "…(已截断)"
# The workflow module that renders and shortens each kind of prompt (the worker's request
# names the kind; the worker imports the module it needs).
FITTERS = {"diagnosis": "medwb.apps.diagnosis.record", "discharge": "medwb.apps.discharge.record",
           "chat": "medwb.apps.chat_prompt"}


def fitter(kind: str):
    if kind not in FITTERS:
        raise MedwbError(f"prompt kind {kind!r}: use one of {', '.join(FITTERS)}")
    return importlib.import_module(FITTERS[kind])


def cut_end(text: str, n_tokens: int, budget: int) -> str:
    """``text`` less roughly the excess tokens' worth of characters at its end, marked 已截断
    (the ratio of characters to tokens of the whole prompt, plus 10%; the caller re-checks)."""
    text = text.removesuffix(CUT_MARK)
    excess_chars = math.ceil((n_tokens - budget) * max(1.0, len(text) / max(1, n_tokens)) * 1.1) + 1
    return text[:max(0, len(text) - excess_chars)] + CUT_MARK


def cut_longest(keys: tuple[str, ...], note: str | None = None):
    """A shortening step: the longest of ``keys`` loses its end (marked 已截断); None once
    every one of them is down to the mark. ``note`` names the step in ``fit``'s notes."""
    def step(fields: dict, n: int, budget: int):
        candidates = [k for k in keys if len(fields[k]) > len(CUT_MARK)]
        if not candidates:
            return None
        key = max(candidates, key=lambda k: len(fields[k]))
        return {**fields, key: cut_end(fields[key], n, budget)}, note
    return step


def fit(fields: dict, encode, context: int, max_new_tokens: int, render, steps,
        cannot_fit: str) -> tuple[str, list[int], list[str], int, dict]:
    """(prompt, its token ids, the notes of the steps that ran, the first token count, the
    fields as fitted).

    ``render(fields) -> str``; each step is ``step(fields, n_tokens, budget) -> (fields,
    note) | None``. ``cannot_fit`` ends the message when every step is spent.
    """
    budget = context - max_new_tokens
    if budget < 16:
        raise MedwbError(f"max_new_tokens {max_new_tokens} leaves no room for the record in the model's "
                         f"context of {context} tokens; lower max_new_tokens")
    fields = dict(fields)
    prompt = render(fields)
    ids = encode(prompt)
    n_first = n = len(ids)
    notes: list[str] = []
    while n > budget:
        for step in steps:
            changed = step(fields, n, budget)
            if changed is not None:
                fields, note = changed
                if note and note not in notes:
                    notes.append(note)
                break
        else:
            raise MedwbError(f"the record does not fit the model's context of {context} tokens "
                             f"({n_first} tokens, {max_new_tokens} kept for the answer) {cannot_fit}")
        prompt = render(fields)
        ids = encode(prompt)
        n = len(ids)
    return prompt, ids, notes, n_first, fields
