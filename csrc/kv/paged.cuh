// Page-table bookkeeping on the device (no host round trip): pages come from and go
// back to a stack free_pages[0:free_count[0]]. Both ops are sequential over rows by
// definition (row order decides which page each row gets), so they run as a single
// thread: B is small and the work is a few hundred integer moves.
#pragma once
#include "../common/types.cuh"

namespace td {

struct PagedArgs {
  int32_t* block_table;  // [B, max_pages], -1 = no page; valid ids form a prefix
  int32_t* free_pages;   // [num_free_slots]
  int32_t* free_count;   // [1]
  const int32_t* lens;   // target_lens (reserve) or keep_lens (release)
  int64_t B, max_pages, num_free_slots, page_size;
};

TD_HD int64_t pages_held(const PagedArgs& a, int64_t b) {
  int64_t held = 0;
  for (int64_t c = 0; c < a.max_pages; ++c) held += a.block_table[b * a.max_pages + c] >= 0;
  return held;
}

// Rows in order take pages from the top region of the stack, lowest entries first.
TD_HD void paged_reserve_all(const PagedArgs& a) {
  int64_t total = 0;
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t want = ceil_div(a.lens[b], a.page_size);
    total += max64(want - pages_held(a, b), 0);
  }
  int64_t next = (int64_t)a.free_count[0] - total;
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t held = pages_held(a, b);
    const int64_t want = min64(ceil_div(a.lens[b], a.page_size), a.max_pages);
    for (int64_t c = held; c < want; ++c) {
      if (next >= 0 && next < a.num_free_slots) a.block_table[b * a.max_pages + c] = a.free_pages[next];
      ++next;
    }
  }
  a.free_count[0] -= (int32_t)total;
}

// Pages past what keep_lens[b] tokens need go on top of the stack in row-major order.
TD_HD void paged_release_all(const PagedArgs& a) {
  int64_t top = a.free_count[0];
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t keep = ceil_div(a.lens[b], a.page_size);
    for (int64_t c = keep; c < a.max_pages; ++c) {
      int32_t& entry = a.block_table[b * a.max_pages + c];
      if (entry < 0) continue;
      if (top < a.num_free_slots) a.free_pages[top] = entry;
      ++top;
      entry = -1;
    }
  }
  a.free_count[0] = (int32_t)top;
}

#if TD_CUDA
static __global__ void paged_reserve_kernel(PagedArgs a) { paged_reserve_all(a); }
static __global__ void paged_release_kernel(PagedArgs a) { paged_release_all(a); }
#endif

}  // namespace td
