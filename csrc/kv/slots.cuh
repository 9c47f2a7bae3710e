// Where logical cache position `pos` of row b lives: contiguous [B, Tmax, Hkv, D]
// (row b, token pos) or paged [num_pages, page, Hkv, D] through block_table[b, pos/page].
// Offsets are in bytes. A token's Hkv x D features are `heads` runs of `head_bytes`
// contiguous bytes, run h starting h * head_stride bytes after the token: heads = 1 when
// the [Hkv, D] slab is dense, heads = Hkv (one run per head) for head-major or sliced
// views. The feature dimension D itself must have unit stride (the launchers check it).
#pragma once
#include "../common/types.cuh"

namespace td {

struct CacheLayout {
  int64_t outer_stride;        // bytes between rows (contiguous) or pages (paged)
  int64_t token_stride;        // bytes between consecutive tokens
  int64_t tokens;              // Tmax (contiguous) or page size (paged)
  const int32_t* block_table;  // nullptr: contiguous
  int64_t max_pages;
};

TD_HD int64_t slot_offset(const CacheLayout& c, int64_t b, int64_t pos) {
  if (c.block_table == nullptr) return b * c.outer_stride + pos * c.token_stride;
  const int64_t page = c.block_table[b * c.max_pages + pos / c.tokens];
  return page * c.outer_stride + (pos % c.tokens) * c.token_stride;
}

// Byte offset, from a token's start, of feature byte `byte` (< heads * head_bytes).
// The copy unit divides head_bytes, so a unit never straddles two runs. Dense slabs
// (one run, or runs back to back) skip the 64-bit division: the launch-uniform branch
// keeps the common layout's cost what it was before runs existed.
TD_HD int64_t run_offset(int64_t byte, int64_t head_bytes, int64_t head_stride) {
  if (head_stride == head_bytes) return byte;
  return (byte / head_bytes) * head_stride + byte % head_bytes;
}

}  // namespace td
