"""Run pytest shards side by side, for bench/gpu_suite.sh's test stage.

    python -m bench.run_shards --shard "PATHS..." [--shard "PATHS..."]... -- PYTEST_OPTIONS...

Each shard is its own `python -m pytest PATHS PYTEST_OPTIONS` process, so the Triton
kernels that the tests compile from a cold cache compile on separate cores instead of one
after another. Every output line is written as it arrives, prefixed with its shard. Exit
status: 0 when every shard passed, else the largest pytest exit code. A `timeout` around
this process reaches the shards too (same process group).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import threading


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m bench.run_shards --shard PATHS [--shard PATHS]... -- PYTEST_OPTIONS")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m bench.run_shards")
    parser.add_argument("--shard", action="append", required=True, help="test paths of one shard (one string)")
    shards = parser.parse_args(argv[:cut]).shard
    options = argv[cut + 1:]
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", *shlex.split(s), *options], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) for s in shards]
    lock = threading.Lock()

    def pump(name, proc):
        for line in proc.stdout:
            with lock:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()

    threads = [threading.Thread(target=pump, args=(shlex.split(s)[0], p)) for s, p in zip(shards, procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = [p.wait() for p in procs]
    print(f"shards: {', '.join(f'{shlex.split(s)[0]} rc={c}' for s, c in zip(shards, codes))}", flush=True)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
