"""The endpoint's prompts (``medwb serve``): a conversation, or a raw prompt, as a model reads it.

A worker asked for kind "chat" gets ``fields`` {"messages": [...]} (rendered through the
model's own chat template, medwb.models.chat) or {"prompt": "..."} (the text as it is, for
/v1/completions). Unlike the apps' records nothing is shortened: a request that does not fit
the model's context with its max_tokens is refused, naming the limit, as the OpenAI protocol
expects (``context_length_exceeded``).
"""
from __future__ import annotations

from medwb.errors import MedwbError

CONTEXT_EXCEEDED = "context_length_exceeded"


def fit_prompt(fields: dict, encode, context: int, max_new_tokens: int, template: str = "",
               chat=None) -> tuple[str, list[int], None]:
    if "messages" in fields:
        from medwb.models.chat import renderer
        prompt = (chat or renderer(None))(fields["messages"])
    else:
        prompt = fields["prompt"]
    ids = encode(prompt)
    if len(ids) + max_new_tokens > context:
        raise MedwbError(f"{CONTEXT_EXCEEDED}: this model's context is {context} tokens; the request has "
                         f"{len(ids)} prompt tokens and max_tokens {max_new_tokens}: shorten the messages or "
                         "lower max_tokens")
    return prompt, ids, None
