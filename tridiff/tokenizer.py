"""Text <-> token ids through a Hugging Face tokenizer.json (the `tokenizers` library,
imported lazily: tridiff's core does not need it).

write_tokenizer builds a byte-level tokenizer for random checkpoints: no training
data, every byte is a token (so any text encodes), special tokens sit exactly at the
config's bos/eos/mask ids, all ids < vocab_size; ids left over are "<unused_N>".
"""
from __future__ import annotations

import json
import os
from typing import Optional

from tridiff._checks import TridiffInputError

TOKENIZER_FILE = "tokenizer.json"


def _tokenizers():
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("tridiff.tokenizer needs the `tokenizers` package "
                          "(pip install tridiff[text])") from exc
    return tokenizers


class Tokenizer:
    """encode(text) -> ids with bos prepended; decode(ids) -> text.

    `path` is a checkpoint directory or a tokenizer.json file. bos/eos/mask ids come
    from the arguments, else from config.json next to the tokenizer.
    """

    def __init__(self, path, *, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None,
                 mask_token_id: Optional[int] = None):
        path = os.fspath(path)
        file = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise TridiffInputError(f"path: expected a directory holding {TOKENIZER_FILE} or the file itself, "
                                    f"got {path!r}")
        self._tok = _tokenizers().Tokenizer.from_file(file)
        config = {}
        cfg_path = os.path.join(os.path.dirname(file), "config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as fh:
                config = json.load(fh)
            config = config.get("text_config", config) if "hidden_size" not in config else config
        eos = config.get("eos_token_id")
        self.bos_token_id = bos_token_id if bos_token_id is not None else config.get("bos_token_id")
        self.eos_token_id = eos_token_id if eos_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        self.mask_token_id = mask_token_id if mask_token_id is not None else config.get("mask_token_id")

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> "Tokenizer":
        return cls(directory, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        # Special tokens come from us, not the file's post-processor: exactly one bos.
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        """Ids outside [0, vocab) (e.g. -1 padding) are dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        n = self.vocab_size
        ids = [int(i) for i in ids if 0 <= int(i) < n]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def write_tokenizer(directory, vocab_size: int, *, bos_id: int = 1, eos_id: int = 11, mask_id: int = 100,
                    unk_id: int = 0) -> str:
    """Write a byte-level BPE tokenizer.json (no merges) into `directory`; returns its path."""
    tk = _tokenizers()
    specials = {unk_id: "<unk>", bos_id: "<s>", eos_id: "</s>", mask_id: "<mask>"}
    if len(specials) != 4:
        raise TridiffInputError(f"special ids: expected four distinct ids (unk, bos, eos, mask), "
                                f"got {unk_id}, {bos_id}, {eos_id}, {mask_id}")
    alphabet = sorted(tk.pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < len(alphabet) + len(specials):
        raise TridiffInputError(f"vocab_size: expected at least {len(alphabet) + len(specials)} "
                                f"(256 bytes + 4 specials), got {vocab_size}")
    for name, i in (("bos_id", bos_id), ("eos_id", eos_id), ("mask_id", mask_id), ("unk_id", unk_id)):
        if not 0 <= i < vocab_size:
            raise TridiffInputError(f"{name}: expected an id in [0, vocab_size={vocab_size}), got {i}")

    vocab = {}
    free = (i for i in range(vocab_size) if i not in specials)
    for ch in alphabet:
        vocab[ch] = next(free)
    for i in free:
        vocab[f"<unused_{i}>"] = i
    for i, tok in specials.items():
        vocab[tok] = i

    tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in specials.values()])
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, TOKENIZER_FILE)
    tok.save(path)
    return path
