"""bench/gpu_suite.sh's test stages, checked on CPU: what they select (collected as a CUDA
machine collects, bench.gpu_collect), that a failure is printed before a stage can be
killed (bench.report_now), and the side-by-side shards (bench.run_shards)."""
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stages():
    out = subprocess.run(["bash", "bench/gpu_suite.sh", "--test-commands"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def _collect(args, *extra):
    """Node ids that `python <args>` would run, collected only."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # tests/conftest.py decides
    args = [a for a in args if a not in ("-q", "-v")]  # -q once: one node id a line
    r = subprocess.run([sys.executable, *args, "--collect-only", "-q", *extra], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_stages_select_in_order_without_compile_checks():
    """tests/cuda alone first; then shards that split the rest without loss or overlap;
    no CPU-only compile check anywhere; failures reported as they happen."""
    cuda_args, *shards = _stages()
    assert shards and all(args[:2] == ["-m", "pytest"] for args in (cuda_args, *shards))
    for args in (cuda_args, *shards):
        assert {"-rf", "--tb=short"} <= set(args) and "bench.report_now" in args
    cuda = _collect(cuda_args, "-p", "bench.gpu_collect")
    assert cuda and all(n.startswith("tests/cuda/") for n in cuda)
    parts = [_collect(args, "-p", "bench.gpu_collect") for args in shards]
    rest = [n for part in parts for n in part]
    assert all(parts) and len(rest) == len(set(rest))  # no shard empty, none overlapping
    options = cuda_args[cuda_args.index("tests/cuda") + 1:]
    everything = _collect(["-m", "pytest", "tests", *options], "-p", "bench.gpu_collect")
    assert sorted(cuda + rest) == sorted(everything)  # the stages together lose no test
    assert any("[triton" in n for n in rest) and any("cuda" in n.partition("[")[2] for n in rest)
    compile_checks = set(_collect(["-m", "pytest", "tests", "-p", "no:cacheprovider", "-m", "compile_check"]))
    assert any(n.startswith("tests/triton/test_compile_sm90.py") for n in compile_checks)
    assert any(n.startswith("tests/cuda/") for n in compile_checks)
    assert not compile_checks & set(everything), sorted(compile_checks & set(everything))


_FAILS_THEN_DIES = """
import os

def test_fails():
    assert 1 == 2, "the detail a killed stage must not lose"

def test_killed():
    os._exit(3)  # the stage's timeout, as far as pytest can tell
"""


def test_failure_is_printed_before_the_run_is_killed(tmp_path):
    (tmp_path / "test_dies.py").write_text(_FAILS_THEN_DIES)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "pytest", "test_dies.py", "-q", "--tb=short", "-p", "no:cacheprovider",
                        "-p", "bench.report_now"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3
    assert "FAILED NOW test_dies.py::test_fails" in r.stdout
    assert "the detail a killed stage must not lose" in r.stdout


def test_shards_run_side_by_side_and_report_the_worst(tmp_path):
    (tmp_path / "test_a.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "test_b.py").write_text("def test_bad():\n    assert False, 'shard b failed'\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "bench.run_shards", "--shard", "test_a.py", "--shard", "test_b.py",
                        "--", "-q", "-p", "no:cacheprovider", "-p", "bench.report_now"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("[test_a.py] ") and "1 passed" in line for line in lines)
    assert any(line.startswith("[test_b.py] FAILED NOW test_b.py::test_bad") for line in lines)
    assert "shards: test_a.py rc=0, test_b.py rc=1" in lines[-1]
