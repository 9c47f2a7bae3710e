// tridiff._cuda: the "cuda" backend's compiled module. Only pybind11 here; the
// kernels and launchers live in the torch-free csrc/*/*_launch.cu files.
#include "bind.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "tridiff CUDA kernels (KV cache, acceptance, sampling, attention)";
  td::bind_ops<td::CudaImpl>(m);
  TD_MODULE_INFO(m)
}
