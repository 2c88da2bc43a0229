"""KV-cache plumbing: rows of KV extended many at once (`rows.py`), and
attention over prompt prefixes shared by many rows (`shared_prefix.py`)."""

from toolken_plus.kv.rows import (
    crop_row,
    empty_row,
    make_prefix,
    padded_batches,
    prefill_by_length,
    prefill_in_batches,
    prefill_rows,
    prefix_row,
    row_segments,
    write_segments,
)
from toolken_plus.kv.shared_prefix import Prefix, SharedPrefix, share_prefixes, step, supports_shared_prefix

__all__ = ["Prefix", "SharedPrefix", "crop_row", "empty_row", "make_prefix", "padded_batches", "prefill_by_length", "prefill_in_batches",
           "prefill_rows", "prefix_row", "row_segments", "share_prefixes", "step", "supports_shared_prefix",
           "write_segments"]
