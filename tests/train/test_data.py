"""Corpus split and tokenizer: the split is a fixed function of the path, the held-out
share is at least 5%, and the trained tokenizer keeps the released special ids."""
import os

from tridiff.train import corpus
from tridiff.train import tokenizer as ttok

RESERVED_PLUS_BYTES = ttok.RESERVED + 256


def test_split_is_by_path_hash_and_disjoint():
    train, held = corpus.split()
    names_t, names_h = {f.relpath for f in train}, {f.relpath for f in held}
    assert names_t and names_h and not names_t & names_h
    assert all(corpus.is_heldout(n) for n in names_h) and not any(corpus.is_heldout(n) for n in names_t)
    assert not any(part in corpus.EXCLUDED_DIRS for n in names_t | names_h for part in n.split("/")[:-1])
    held_bytes = sum(os.path.getsize(f.path) for f in held)
    all_bytes = held_bytes + sum(os.path.getsize(f.path) for f in train)
    assert held_bytes / all_bytes >= 0.05 and len(held) / (len(held) + len(train)) >= 0.05


def test_split_is_a_fixed_function_of_the_path():
    # pinned answers: a change of hash or share would move these files
    assert [corpus.is_heldout(p) for p in ("abc.py", "textwrap.py", "os.py", "json/decoder.py")] == \
        [True, True, False, False]


def test_trained_tokenizer_keeps_special_ids(tmp_path):
    from tridiff.tokenizer import Tokenizer

    text = "def f(x):\n    return x + 1\n" * 50
    path = ttok.train_tokenizer([text], 600, tmp_path)
    tok = Tokenizer(path, bos_token_id=1, eos_token_id=11, mask_token_id=100)
    assert RESERVED_PLUS_BYTES < tok.vocab_size <= 600
    for name, i in ttok.SPECIAL_IDS.items():
        assert tok._tok.token_to_id(ttok.SPECIAL_NAMES[name]) == i
    ids = tok.encode(text)
    assert ids[0] == 1 and tok.decode(ids) == text
    # merges were learned: one token per pre-tokenizer word (11 per line), not per byte
    assert len(ids) == 1 + 11 * 50
