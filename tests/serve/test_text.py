"""TextStream: streamed text equals the whole decode, stop strings cut the text (across
token boundaries, never sent in part), partial UTF-8 characters are held back. On the
bundled model's byte-level tokenizer (one token per byte for non-ASCII text)."""
import pytest

from tridiff import models
from tridiff.serve.text import TextStream

pytest.importorskip("tokenizers", reason="needs the tokenizers package for the bundled tokenizer")


@pytest.fixture(scope="module")
def tok():
    from tridiff.tokenizer import Tokenizer

    return Tokenizer(models.path())


def _stream(tok, ids, stops=(), chunk=1):
    ts = TextStream(tok, stops)
    pieces = [ts.feed(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    pieces.append(ts.finish())
    return ts, pieces


@pytest.mark.parametrize("chunk", [1, 3])
def test_pieces_join_to_the_whole_decode(tok, chunk):
    ids = tok.encode("def f(x):\n    return x * 2  # é ü 日本\n", add_bos=False)
    ts, pieces = _stream(tok, ids, chunk=chunk)
    assert "".join(pieces) == tok.decode(ids) and not ts.stopped
    assert all("\ufffd" not in p for p in pieces)  # no half character ever sent


def test_partial_utf8_is_held_until_complete(tok):
    ids = tok.encode("日", add_bos=False)
    assert len(ids) > 1  # several byte tokens
    ts = TextStream(tok)
    assert [ts.feed([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert ts.feed(ids[-1:]) == "日"


def test_stop_string_across_tokens(tok):
    text = "alpha = 1\nbeta = 2\ngamma = 3\n"
    ids = tok.encode(text, add_bos=False)
    ts, pieces = _stream(tok, ids, stops=("beta =", "zzz"))
    assert ts.stopped and "".join(pieces) == "alpha = 1\n"
    assert tok.decode(ids[:ts.stop_at]).endswith("beta =")  # stop_at: through the token completing it
    assert not tok.decode(ids[:ts.stop_at - 1]).endswith("beta =")
    # the held-back prefix "beta" was never sent before the stop was known
    assert all("beta" not in p for p in pieces)


def test_held_back_prefix_is_released_when_it_does_not_become_a_stop(tok):
    ids = tok.encode("x = ab\ny = abd", add_bos=False)
    ts, pieces = _stream(tok, ids, stops=("abc",))
    assert not ts.stopped and "".join(pieces) == "x = ab\ny = abd"


def test_earliest_stop_wins(tok):
    ids = tok.encode("one two three", add_bos=False)
    ts, pieces = _stream(tok, ids, stops=("three", "two"))
    assert ts.stopped and "".join(pieces) == "one "


def test_without_tokenizer_text_is_empty():
    ts, pieces = _stream(None, [5, 6, 7])
    assert pieces == ["", "", "", ""] and ts.ids == [5, 6, 7]


@pytest.mark.parametrize("stops", [(), ("return",)])
def test_not_incremental_decodes_at_finish(tok, stops):
    ids = tok.encode("def f(x):\n    return x\n", add_bos=False)
    ts = TextStream(tok, stops, incremental=False)
    pieces = [ts.feed([i]) for i in ids] + [ts.finish()]
    if stops:  # stop strings still need the text as it grows
        assert ts.stopped and "".join(pieces) == "def f(x):\n    "
    else:
        assert pieces[:-1] == [""] * len(ids) and pieces[-1] == tok.decode(ids)
