"""Chat messages -> prompt ids through the model's chat template.

The template is tokenizer_config.json's "chat_template" (a Jinja string, as Hugging Face
checkpoints ship it; a list of named templates takes the one named "default"). It is
rendered in jinja2's sandbox with `messages`, `add_generation_prompt=True`,
`bos_token`, `eos_token` and `raise_exception`, and the result is encoded without an
added bos (the template writes its own special tokens, as with transformers'
apply_chat_template). A model without a template has no chat endpoint: ChatTemplate.load
returns None and the server answers 400.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from tridiff.serve.protocol import ProtocolError

CONFIG_FILE = "tokenizer_config.json"


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):  # {"content": "<s>", ...} (AddedToken form)
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTemplate:
    def __init__(self, source: str, tokenizer, *, bos_token: Optional[str] = None,
                 eos_token: Optional[str] = None):
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as exc:  # pragma: no cover - jinja2 comes with the serve extra
            raise ImportError("a chat template needs jinja2 (pip install tridiff[serve])") from exc
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)
        self._tok = tokenizer
        self.bos_token = bos_token if bos_token is not None else _special(tokenizer, "bos_token_id")
        self.eos_token = eos_token if eos_token is not None else _special(tokenizer, "eos_token_id")

    @classmethod
    def load(cls, model_dir, tokenizer) -> Optional["ChatTemplate"]:
        """The template of `model_dir`, or None when it has none (or no tokenizer)."""
        path = os.path.join(os.fspath(model_dir), CONFIG_FILE)
        if tokenizer is None or not os.path.isfile(path):
            return None
        with open(path) as fh:
            cfg = json.load(fh)
        source = cfg.get("chat_template")
        if isinstance(source, list):  # [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if not isinstance(source, str) or not source.strip():
            return None
        return cls(source, tokenizer, bos_token=_token_text(cfg.get("bos_token")),
                   eos_token=_token_text(cfg.get("eos_token")))

    def render(self, messages: list) -> str:
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=True,
                                         bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except TemplateError as exc:
            raise ProtocolError(f"messages: the chat template refused them: {exc}", param="messages") from None

    def encode(self, messages: list) -> list[int]:
        return self._tok.encode(self.render(messages), add_bos=False)


def _special(tokenizer, attr) -> Optional[str]:
    i = getattr(tokenizer, attr, None)
    return tokenizer.decode([i], skip_special_tokens=False) if i is not None else None


def _raise(message):
    from jinja2 import TemplateError

    raise TemplateError(message)
