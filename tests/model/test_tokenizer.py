"""The byte-level tokenizer written with random checkpoints, and the Tokenizer wrapper."""
import json

import pytest

from tridiff._checks import TridiffInputError
from tridiff.tokenizer import Tokenizer, write_tokenizer

pytest.importorskip("tokenizers", reason="needs the tokenizers package")


def test_special_ids_and_round_trip(tmp_path):
    write_tokenizer(tmp_path, 512, bos_id=1, eos_id=11, mask_id=100)
    tok = Tokenizer(tmp_path, bos_token_id=1, eos_token_id=11, mask_token_id=100)
    assert tok.vocab_size == 512
    inner = tok._tok
    assert [inner.token_to_id(t) for t in ("<s>", "</s>", "<mask>")] == [1, 11, 100]
    text = "Hello, wörld!\n\t日本語 <s> done"
    ids = tok.encode(text)
    assert ids[0] == 1 and ids.count(1) == 1 + 1  # our bos, plus the literal "<s>" in the text
    assert all(0 <= i < 512 for i in ids)
    assert tok.decode(ids[1:], skip_special_tokens=False) == text
    assert tok.decode([1, 72, 100, 11, -1], skip_special_tokens=False) == "<s>" + tok.decode([72]) + "<mask></s>"
    assert tok.decode([1, 72, 100, 11, -1]) == tok.decode([72])  # specials and padding dropped
    assert tok.encode("", add_bos=False) == []


def test_ids_come_from_config_json(tmp_path):
    write_tokenizer(tmp_path, 300, bos_id=5, eos_id=7, mask_id=9)
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 5, "eos_token_id": [7, 2], "mask_token_id": 9,
                                                      "hidden_size": 8}))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.mask_token_id) == (5, 7, 9)
    assert tok.encode("a")[0] == 5 and max(tok.encode("\xff" * 3)) < 300


def test_refuses_impossible_layouts(tmp_path):
    with pytest.raises(TridiffInputError, match="vocab_size"):
        write_tokenizer(tmp_path, 200)
    with pytest.raises(TridiffInputError, match="special ids"):
        write_tokenizer(tmp_path, 512, bos_id=1, eos_id=1)
    with pytest.raises(TridiffInputError, match="mask_id"):
        write_tokenizer(tmp_path, 300, mask_id=300)
    with pytest.raises(TridiffInputError, match="path"):
        Tokenizer(tmp_path / "nowhere")
