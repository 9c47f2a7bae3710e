"""tridiff benchmarks: one module per op family plus end-to-end decoding.

Run a module with `python -m bench.bench_attention [--quick] [--out DIR]`; rows go to
DIR/<name>.jsonl (default bench/results/). See bench/NOTES.md for the floors and
bench/gpu_suite.sh for the one-call GPU run.
"""
