"""Old path of tridiff.reference.slots, kept for the attention files still importing it."""
from tridiff.reference.slots import capacity, logical_view, physical_index, write_rows  # noqa: F401
