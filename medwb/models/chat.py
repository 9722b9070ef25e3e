"""A model's prompts: each user message through the model's own chat template, once.

Every route is then fed the same text (and, tokenized, the same ids): the template is
applied here, never again by a runtime (openvino-genai's own template is switched off).
The benchmark and the evaluation render in the main environment, the apps' model processes
in their backend's (transformers 4.31 in bigdl's, 4.47 in ipex's, none in llama.cpp's), so
the template is rendered with jinja2 the way transformers' ``apply_chat_template`` renders it
(the same sandbox, whitespace settings and special-token variables; a test compares both),
not through a tokenizer that some environments cannot load. The demo model's template
(medwb.tasks.prompts.CHAT_TEMPLATE) is rendered by its own function; a folder with no
template gets its family's published format where the registry has one (Baichuan2's), else
the raw text.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

# Special tokens a template may name (``{{ bos_token }}``), as tokenizer_config.json gives them.
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


def template_of(model_path) -> dict:
    """{"chat_template", special tokens} from the tokenizer_config.json of a checkpoint or
    artifact folder (or of the folder holding a model file); {} when there is none."""
    folder = Path(model_path)
    folder = folder if folder.is_dir() else folder.parent
    path = folder / "tokenizer_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    template = cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template:
        template_file = folder / "chat_template.jinja"  # transformers 5 writes it beside the config
        template = template_file.read_text(encoding="utf-8") if template_file.exists() else None
    template = template or _family_template(folder)
    if not template:
        return {}
    special = {k: v if isinstance(v, str) else (v or {}).get("content", "") for k, v in cfg.items() if k in _SPECIAL}
    return {"chat_template": template, **special}


def _family_template(folder: Path) -> str | None:
    """The family's published chat format when its folders carry no template (Baichuan2's
    markers: medwb.models.architectures), None for the others and for unknown families."""
    from medwb.models import architectures
    arch = architectures.known(folder)
    return (arch.chat_template or None) if arch else None


@lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from medwb.errors import MedwbError

    def raise_exception(message):
        raise MedwbError(f"the model's chat template refused the prompt: {message}")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def renderer(chat: dict | None) -> Callable[[str | list], str]:
    """A user's text (or a whole conversation: a list of {"role", "content"}) -> ``chat``'s
    template (``template_of``'s answer) with the assistant's turn opened; the demo template by
    its own function; no template: the text as it is (a conversation's contents, one per line)."""
    from medwb.tasks import prompts
    template = (chat or {}).get("chat_template")

    def messages(x):
        return x if isinstance(x, list) else [{"role": "user", "content": x}]
    if template == prompts.CHAT_TEMPLATE:
        return lambda x: prompts.render_chat(messages(x))
    if not template:
        return lambda x: "\n".join(m["content"] for m in messages(x))
    compiled = _compiled(template)
    special = {k: v for k, v in chat.items() if k in _SPECIAL}
    return lambda x: compiled.render(messages=messages(x), add_generation_prompt=True, **special)


def chat_prompts(model_dir, inputs: list[str]) -> list[str]:
    """Each ``input`` as the user turn of ``model_dir``'s chat template (from its
    tokenizer_config.json), with the assistant's turn opened."""
    render = renderer(template_of(model_dir))
    return [render(x) for x in inputs]
