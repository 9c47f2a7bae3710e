"""Exceptions every part of tridiff raises, the torch-free ones (tridiff.cupy) included."""


class TridiffInputError(ValueError):
    """Raised for bad arguments to a tridiff op; the message names the argument."""
