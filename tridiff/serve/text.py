"""Generated ids -> text for one request, in pieces as tokens arrive, with stop strings.

TextStream.feed(ids) returns the text that is safe to send now: text that cannot still
turn into a stop string (the longest tail that is a prefix of one is held back) and
that does not end in a partial UTF-8 character (decode gives U+FFFD there; held until
the next token completes it). When a stop string appears, the text ends just before it
and `stopped` is set: the caller aborts the request in the engine and answers
finish_reason "stop". Without a tokenizer the text is always "" (ids only).
incremental=False (a whole answer, not a stream): without stop strings nothing is
decoded before finish(), which decodes once.
"""
from __future__ import annotations

from typing import Optional

_REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer, stop_strings=(), *, incremental: bool = True):
        self._tok = tokenizer
        self._stops = tuple(stop_strings)
        self._incremental = incremental  # False: no text before finish() (unless stop strings need it)
        self.ids: list[int] = []
        self.sent = 0            # characters of the decoded text already returned
        self.stopped = False     # a stop string was found
        self.stop_at: Optional[int] = None  # ids consumed up to and including the token that completed it
        self._text = ""

    def _decode(self) -> str:
        return self._tok.decode(self.ids) if self._tok is not None else ""

    def feed(self, new_ids) -> str:
        """Take newly generated ids; return the text to send now ("" while held back)."""
        if self.stopped:
            return ""
        for t in new_ids:  # one token at a time: the stop is found at the token that completes it
            self.ids.append(int(t))
            if self._stops:
                self._text = self._decode()
                cut = self._find_stop(self._text)
                if cut is not None:
                    self.stopped, self.stop_at = True, len(self.ids)
                    cut = max(cut, self.sent)
                    out, self.sent = self._text[self.sent:cut], cut
                    return out
        if not self._stops:
            if not self._incremental:
                return ""
            self._text = self._decode()
        safe = self._safe_end(self._text)
        out = self._text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out

    def finish(self) -> str:
        """The request ended (length, eos, abort): the rest of the text, nothing held."""
        if self.stopped:
            return ""
        text = self._decode()
        out, self.sent = text[self.sent:], len(text)
        return out

    def _find_stop(self, text: str) -> Optional[int]:
        start = max(0, self.sent - max(len(s) for s in self._stops))
        hits = [i for i in (text.find(s, start) for s in self._stops) if i >= 0]
        return min(hits) if hits else None

    def _safe_end(self, text: str) -> int:
        end = len(text)
        while end > self.sent and text[end - 1] == _REPLACEMENT:
            end -= 1
        hold = 0
        for s in self._stops:  # the longest tail of text that a stop string starts with
            for k in range(min(len(s) - 1, end - self.sent), hold, -1):
                if text[end - k:end] == s[:k]:
                    hold = k
                    break
        return end - hold
