// tridiff._cpp: the "cpp" backend's compiled module (CPU, OpenMP).
#include "../bind.h"

PYBIND11_MODULE(_cpp, m) {
  m.doc() = "tridiff CPU kernels (KV cache, acceptance, sampling, attention)";
  td::bind_ops<td::CpuImpl>(m);
  TD_MODULE_INFO(m)
}
