"""Held-out material for judging a trained model: code prompts cut at line ends and
real prefixes at positions drawn across the held-out files. Deterministic for a given
seed and standard library."""
from __future__ import annotations

import json
import os
import random

from tridiff.train import corpus

DEMO_PROMPTS_FILE = "demo_prompts.json"


def _heldout_texts() -> list[tuple[str, str]]:
    return [(f.relpath, f.read()) for f in corpus.split()[1]]


def code_prompts(tok, count: int, *, seed: int = 0, min_tokens: int = 48, max_tokens: int = 160) -> list[dict]:
    """`count` prompts, each whole lines of one held-out file (at most one prompt per
    file while files last), from a line start to the end of a line (its newline
    excluded), between min_tokens and max_tokens long. A prompt at the file's start
    gets bos."""
    rnd = random.Random(seed)
    files = [(name, text.splitlines(keepends=True)) for name, text in _heldout_texts()]
    files = [(n, lines) for n, lines in files if len(lines) > 40]
    out, used = [], set()
    while len(out) < count:
        name, lines = rnd.choice(files)
        if name in used and len(used) < len(files):
            continue
        start = rnd.randrange(0, len(lines) - 20)
        if not lines[start].strip():  # start on a line with content
            continue
        text, end = "", start
        while end < len(lines) and len(tok.encode(text, add_bos=False)) < min_tokens:
            text += lines[end]
            end += 1
        # End on the line's last character, not its newline: a newline and the next
        # line's indentation are one token, so a prompt ending in a bare newline asks
        # for a token boundary the model never saw mid-file.
        text = text.rstrip("\n")
        ids = tok.encode(text, add_bos=start == 0)
        if not min_tokens <= len(ids) <= max_tokens or end >= len(lines):
            continue
        used.add(name)
        out.append({"file": name, "first_line": start + 1, "text": text, "ids": ids})
    return out


def real_prefixes(tok, count: int, *, seed: int = 0, context: int = 192, min_context: int = 16) -> list[list[int]]:
    """`count` token prefixes ending at positions drawn uniformly over the held-out
    token stream: the up to `context` tokens before the position, within one file
    (a prefix that reaches the file's start begins with bos)."""
    streams = [tok.encode(text, add_bos=True) for _, text in _heldout_texts()]
    spans = [(i, pos) for i, ids in enumerate(streams) for pos in range(min_context, len(ids) - 1)]
    rnd = random.Random(seed)
    picks = rnd.sample(spans, count)
    return [streams[i][max(0, pos - context):pos] for i, pos in picks]


def write_demo_prompts(tok, directory, count: int = 4, seed: int = 1) -> str:
    """A few held-out prompts stored beside a checkpoint, so the demo needs no corpus."""
    prompts = code_prompts(tok, count, seed=seed, max_tokens=96)
    path = os.path.join(os.fspath(directory), DEMO_PROMPTS_FILE)
    with open(path, "w") as fh:
        json.dump([{"source": f"{corpus.describe()}: {p['file']}, line {p['first_line']}", "text": p["text"]}
                   for p in prompts], fh, indent=2)
        fh.write("\n")
    return path
