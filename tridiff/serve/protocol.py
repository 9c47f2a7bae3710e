"""The OpenAI wire format of `tridiff serve`: request parsing and validation, response
and stream-chunk shapes, error bodies. Plain Python (no web framework, no torch).

A request body becomes a GenerationRequest (the engine's arguments plus what serve
itself needs: stop strings, stream flag, the kind of endpoint). Everything a client
can get wrong in the body raises ProtocolError(status 400, message naming the field)
here, before the engine sees it; the engine's own checks (prompt too long for the
cache, max_new_tokens out of range, a strategy's settings) come back as 400 too.

tridiff's extra request fields: strategy ("auto" | "ar" | "diffusion" | "linear-spec" |
"quadratic-spec"), threshold, block_length, anchors (int or list of ints), rule
("lossless" | "reference"). `stop` takes strings and/or token ids. temperature
defaults to 0 (greedy), max_tokens to 16. Each choice also carries `token_ids` (the
generated ids); a stream's last chunk carries usage (and with stream_options
{"include_usage": true} a usage-only chunk with no choice follows it, as OpenAI sends).
Usage adds tokens_per_forward, accepted_lengths, nfe, mean_accepted, the strategy asked
and strategies_run (what "auto" ran).
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

STRATEGIES = ("auto", "ar", "diffusion", "linear-spec", "quadratic-spec")
RULES = ("lossless", "reference")
DEFAULT_MAX_TOKENS = 16
# OpenAI fields accepted only at their neutral value (anything else is refused, not ignored).
_NEUTRAL = {"top_p": (None, 1, 1.0), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
            "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
            "logit_bias": (None, {}), "suffix": (None, ""), "tools": (None, []),
            "response_format": (None, {"type": "text"})}
# OpenAI fields taken and ignored (they do not change the output).
_IGNORED = {"user", "stream_options", "model", "metadata", "store", "service_tier", "parallel_tool_calls",
            "tool_choice"}
# Engine argument -> request field, for the engine's own error messages.
ENGINE_FIELDS = {"max_new_tokens": "max_tokens", "prompt_ids": "prompt", "stop_ids": "stop"}


class ProtocolError(Exception):
    """A request the server refuses: HTTP `status` with an OpenAI-style error body."""

    def __init__(self, message: str, *, status: int = 400, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.message, self.status, self.param, self.type, self.code = message, status, param, type, code

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class GenerationRequest:
    """One parsed request. `engine_args` are add_request's keyword arguments (prompt
    aside); `prompt` is a string (to encode) or token ids; chat requests carry
    `messages` instead (rendered by the chat template)."""
    chat: bool
    prompt: object = None                 # str | list[int] (completions)
    messages: Optional[list] = None       # chat
    stream: bool = False
    include_usage: bool = False
    stop_strings: tuple = ()
    engine_args: dict = field(default_factory=dict)
    model: Optional[str] = None


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid JSON in the request body: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(body, name, default=None, *, low=None):
    v = body.get(name, default)
    if v is None:
        return default
    if not _is_int(v):
        raise ProtocolError(f"{name}: expected an integer, got {json.dumps(v)}", param=name)
    if low is not None and v < low:
        raise ProtocolError(f"{name}: expected an integer >= {low}, got {v}", param=name)
    return v


def _number(body, name, default=None):
    v = body.get(name, default)
    if v is None:
        return default
    if not _is_number(v) or not math.isfinite(v):
        raise ProtocolError(f"{name}: expected a finite number, got {json.dumps(v)}", param=name)
    return float(v)


def _token_ids(v, name) -> list:
    if not v:
        raise ProtocolError(f"{name}: expected a non-empty prompt", param=name)
    if not all(_is_int(t) for t in v):
        raise ProtocolError(f"{name}: a token-id prompt must hold integers only", param=name)
    if any(t < 0 for t in v):
        raise ProtocolError(f"{name}: token ids must be >= 0", param=name)
    return list(v)


def _prompt(body):
    """A string, a list of token ids, or a batch of exactly one of those."""
    if "prompt" not in body:
        raise ProtocolError("prompt: required", param="prompt")
    p = body["prompt"]
    if isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
        if len(p) != 1:
            raise ProtocolError(f"prompt: one prompt per request (n=1), got a batch of {len(p)}", param="prompt")
        p = p[0]
    if isinstance(p, str):
        if p == "":
            raise ProtocolError("prompt: expected a non-empty prompt", param="prompt")
        return p
    if isinstance(p, list):
        return _token_ids(p, "prompt")
    raise ProtocolError(f"prompt: expected a string or a list of token ids, got {type(p).__name__}",
                        param="prompt")


def _messages(body) -> list:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ProtocolError("messages: expected a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ProtocolError(f"messages[{i}]: expected an object with a string role", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ProtocolError(f"messages[{i}].content: only text parts are supported", param="messages")
                texts.append(part["text"])
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise ProtocolError(f"messages[{i}].content: expected a string, got {type(content).__name__}",
                                param="messages")
        out.append({**m, "content": content})
    return out


def _stop(body):
    """stop: a string, a token id, or a list of either -> (strings, ids)."""
    v = body.get("stop")
    if v is None:
        return (), ()
    items = v if isinstance(v, list) else [v]
    strings, ids = [], []
    for s in items:
        if isinstance(s, str):
            if s == "":
                raise ProtocolError("stop: empty stop strings are not allowed", param="stop")
            strings.append(s)
        elif _is_int(s) and s >= 0:
            ids.append(s)
        else:
            raise ProtocolError(f"stop: expected strings and/or token ids (integers >= 0), got {json.dumps(s)}",
                                param="stop")
    return tuple(strings), tuple(ids)


def _anchors(body):
    v = body.get("anchors")
    if v is None or _is_int(v):
        return v
    if isinstance(v, list) and v and all(_is_int(a) for a in v):
        return tuple(v)
    raise ProtocolError(f"anchors: expected an integer or a non-empty list of integers, got {json.dumps(v)}",
                        param="anchors")


def parse_request(body: dict, *, chat: bool, default_strategy: str = "auto") -> GenerationRequest:
    """Validate a /v1/completions (chat=False) or /v1/chat/completions body."""
    for name, neutral in _NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise ProtocolError(f"{name}: not supported by tridiff serve (got {json.dumps(body[name])})",
                                param=name)
    n = _int(body, "n", 1)
    if n != 1:
        raise ProtocolError(f"n: only n=1 is supported, got {n}", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ProtocolError(f"stream: expected a boolean, got {json.dumps(stream)}", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ProtocolError("stream_options: expected an object", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError(f"model: expected a string, got {json.dumps(model)}", param="model")

    max_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, max_name, DEFAULT_MAX_TOKENS, low=1)
    temperature = _number(body, "temperature", 0.0)
    if temperature < 0:
        raise ProtocolError(f"temperature: expected a number >= 0, got {temperature}", param="temperature")
    seed = _int(body, "seed", 0)
    strategy = body.get("strategy", default_strategy)
    if strategy not in STRATEGIES:
        raise ProtocolError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {json.dumps(strategy)}",
                            param="strategy")
    rule = body.get("rule", "lossless")
    if rule not in RULES:
        raise ProtocolError(f"rule: expected one of {', '.join(RULES)}, got {json.dumps(rule)}", param="rule")
    stop_strings, stop_ids = _stop(body)
    engine_args = dict(strategy=strategy, max_new_tokens=max_tokens, temperature=temperature,
                       threshold=_number(body, "threshold"), block_length=_int(body, "block_length"),
                       anchors=_anchors(body), stop_ids=stop_ids, seed=seed, rule=rule)
    known = set(_NEUTRAL) | _IGNORED | {"n", "stream", "max_tokens", "max_completion_tokens", "temperature",
                                        "seed", "strategy", "rule", "stop", "threshold", "block_length",
                                        "anchors", "prompt" if not chat else "messages"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ProtocolError(f"{unknown[0]}: unknown field for {'chat ' if chat else ''}completions",
                            param=unknown[0])
    req = GenerationRequest(chat=chat, stream=stream, include_usage=bool((opts or {}).get("include_usage")),
                            stop_strings=stop_strings, engine_args=engine_args, model=model)
    if chat:
        req.messages = _messages(body)
    else:
        req.prompt = _prompt(body)
    return req


def engine_error(exc: Exception) -> ProtocolError:
    """The engine's refusal of a request's arguments (a TridiffInputError, whose message
    names the engine argument) as a 400 naming the request field."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    head = msg.split(":", 1)[0].strip()
    param = ENGINE_FIELDS.get(head, head if head.isidentifier() else None)
    if head in ENGINE_FIELDS:
        msg = f"{ENGINE_FIELDS[head]} ({head}){msg[len(head):]}"
    return ProtocolError(msg, param=param)


# ----------------------------------------------------------------------------- responses

def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, final) -> dict:
    """OpenAI usage plus tridiff's: tokens_per_forward, nfe, accepted_lengths, mean_accepted,
    the strategy asked and strategies_run (engine steps per strategy actually run: what
    "auto" chose), from the engine's final RequestOutput."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "tokens_per_forward": getattr(final, "tokens_per_forward", None),
            "nfe": getattr(final, "nfe", None),
            "accepted_lengths": list(getattr(final, "accepted_lengths", None) or []),
            "mean_accepted": getattr(final, "mean_accepted", None),
            "strategy": getattr(final, "strategy", None),
            "strategies_run": getattr(final, "strategies_run", None)}


def completion(rid: str, model: str, created: int, *, chat: bool, text: str, token_ids: list,
               finish_reason: Optional[str], usage_: dict) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason, "token_ids": token_ids}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                  "token_ids": token_ids}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice], "usage": usage_}


def chunk(rid: str, model: str, created: int, *, chat: bool, text: Optional[str], token_ids: list,
          finish_reason: Optional[str] = None, usage_: Optional[dict] = None, role: bool = False) -> dict:
    """One streamed chunk. text None: no choice (a usage-only chunk)."""
    choices = []
    if text is not None:
        if chat:
            delta = {"role": "assistant", "content": text} if role else {"content": text}
            choices.append({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason,
                            "token_ids": token_ids})
        else:
            choices.append({"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                            "token_ids": token_ids})
    out = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
           "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def sse(obj) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def models_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                        "owned_by": "tridiff"}]}


def now() -> int:
    return int(time.time())
