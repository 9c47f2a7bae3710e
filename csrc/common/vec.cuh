// Vector-width selection for byte copies: the widest unit (16, 8, 4, 2, 1 bytes)
// that divides every pointer, stride and row size involved, so each thread moves
// 16 bytes per access whenever the layout allows.
#pragma once
#include "types.cuh"

namespace td {

TD_HD int vec_bytes_for(uint64_t bits_or) {
  if ((bits_or & 15u) == 0) return 16;
  if ((bits_or & 7u) == 0) return 8;
  if ((bits_or & 3u) == 0) return 4;
  if ((bits_or & 1u) == 0) return 2;
  return 1;
}

// VecN<bytes>::type is the copy unit.
template <int N> struct VecN;
template <> struct VecN<16> { typedef u128 type; };
template <> struct VecN<8> { typedef u64v type; };
template <> struct VecN<4> { typedef uint32_t type; };
template <> struct VecN<2> { typedef uint16_t type; };
template <> struct VecN<1> { typedef uint8_t type; };

}  // namespace td

// TD_DISPATCH_VEC(bytes, V, ...): run the body with V the copy unit of `bytes`.
#define TD_DISPATCH_VEC(bytes, V, ...)                                   \
  switch (bytes) {                                                       \
    case 16: { typedef td::VecN<16>::type V; __VA_ARGS__; break; }       \
    case 8: { typedef td::VecN<8>::type V; __VA_ARGS__; break; }         \
    case 4: { typedef td::VecN<4>::type V; __VA_ARGS__; break; }         \
    case 2: { typedef td::VecN<2>::type V; __VA_ARGS__; break; }         \
    default: { typedef td::VecN<1>::type V; __VA_ARGS__; break; }        \
  }
