"""A byte-level BPE tokenizer trained on the training split.

The first RESERVED ids are special tokens, placed so the released ids hold: unk 0,
bos 1, pad 2, eos 11, mask 100 (the rest are unused control tokens). Code that
hard-codes the released special ids therefore works with this vocabulary too.
"""
from __future__ import annotations

import os

from tridiff.tokenizer import TOKENIZER_FILE, _tokenizers

RESERVED = 128
SPECIAL_IDS = {"unk": 0, "bos": 1, "pad": 2, "eos": 11, "mask": 100}
SPECIAL_NAMES = {"unk": "<unk>", "bos": "<s>", "pad": "<pad>", "eos": "</s>", "mask": "<mask>"}


def special_tokens() -> list[str]:
    by_id = {i: SPECIAL_NAMES[k] for k, i in SPECIAL_IDS.items()}
    return [by_id.get(i, f"<ctrl_{i}>") for i in range(RESERVED)]


def train_tokenizer(texts, vocab_size: int, out_dir) -> str:
    """Train on an iterable of texts; write tokenizer.json into out_dir; return its path."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE(unk_token=SPECIAL_NAMES["unk"]))
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens(),
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    for name, i in SPECIAL_IDS.items():  # the trainer assigns specials in list order
        got = tok.token_to_id(SPECIAL_NAMES[name])
        if got != i:
            raise RuntimeError(f"tokenizer: {name} landed at id {got}, expected {i}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(os.fspath(out_dir), TOKENIZER_FILE)
    tok.save(path)
    return path
