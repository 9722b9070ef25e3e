"""A model's prompts: each user message through the model's own chat template, once.

Every route is then fed the same text (and, tokenized, the same ids): the template is
applied here, never again by a runtime (openvino-genai's own template is switched off).
The demo model's template (medwb.tasks.prompts.CHAT_TEMPLATE) is rendered without loading
its tokenizer; a folder with no template gets the raw text.
"""
from __future__ import annotations

import json
from pathlib import Path


def chat_prompts(model_dir, inputs: list[str]) -> list[str]:
    """Each ``input`` as the user turn of ``model_dir``'s chat template (from its
    tokenizer_config.json), with the assistant's turn opened."""
    from medwb.tasks import prompts
    cfg_path = Path(model_dir) / "tokenizer_config.json"
    template = json.loads(cfg_path.read_text(encoding="utf-8")).get("chat_template") if cfg_path.exists() else None
    if template == prompts.CHAT_TEMPLATE:
        return [prompts.render_chat([{"role": "user", "content": x}]) for x in inputs]
    if not template:
        return list(inputs)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    return [tok.apply_chat_template([{"role": "user", "content": x}], tokenize=False, add_generation_prompt=True)
            for x in inputs]
