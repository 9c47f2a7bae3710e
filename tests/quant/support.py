"""Shared by the quantized-model tests."""


def code_prompts(tok) -> list:
    """Two code prompts for the bundled model (bos first)."""
    return [tok.encode("import os\n\n\ndef read_lines(path):\n", add_bos=True),
            tok.encode("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self",
                       add_bos=True)]
