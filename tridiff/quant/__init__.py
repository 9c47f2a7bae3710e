"""Quantized and narrower weights: the GPTQ layout (gptq), the checkpoint's declared
quantization (config), packed projections (packed), loading (load) and `tridiff
quantize` (export). Importing this package imports none of its modules: tridiff.ops and
tridiff.projection import the ones they need."""
