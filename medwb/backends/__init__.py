"""Inference backends, one file each, all with the same small protocol:

- ``load(model_dir, ...)``: build the backend from a local directory (never a hub id);
- ``generate(prompts, max_new_tokens, streamer=None) -> list[str]``: greedy completions of
  already-formatted prompts (see ``medwb.prompts.render_chat``);
- ``describe() -> dict``: what ran (backend, precision, library versions, threads).
"""
