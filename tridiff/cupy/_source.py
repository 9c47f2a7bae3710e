"""CUDA source for the cupy path: csrc/cupy/cupy_kernels.cuh (wrapper kernels around
the csrc/ kernel bodies), compiled by NVRTC through cupy.RawModule, and the template
instantiations (name expressions) the launchers in tridiff/cupy/__init__.py use."""

SOURCE = '#include "cupy/cupy_kernels.cuh"\n'

VEC_TYPES = {16: "td::u128", 8: "td::u64v", 4: "uint32_t", 2: "uint16_t", 1: "uint8_t"}
# cupy dtype name (or "bfloat16" for uint16 storage) -> (C++ storage type, td::Dtype code)
LOGIT_TYPES = {"float16": "td::f16", "bfloat16": "td::bf16", "float32": "float", "float64": "double"}


def name_expressions():
    names = [f"cupy_kv_write<{t}>" for t in VEC_TYPES.values()]
    names += [f"cupy_kv_compact<{t}>" for t in VEC_TYPES.values()]
    names += ["cupy_kv_commit", "cupy_sample_finish", "cupy_accept_finish<true>", "cupy_accept_finish<false>"]
    for kind in (0, 1):
        for t in LOGIT_TYPES.values():
            for vec in ("true", "false"):
                names.append(f"cupy_row_scan<{kind}, {t}, {vec}>")
    return names
