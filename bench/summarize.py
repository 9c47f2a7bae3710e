"""Short summary of a results folder: per op and shape, the best tridiff row against the
best baseline of the same run, then the e2e targets. Printed last by gpu_suite.sh.

    python -m bench.summarize DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHES = ("attention", "kv_cache", "accept", "e2e")
SHORT_KEYS = ("B", "P", "Tq", "n", "L", "V", "T", "mode", "stage", "tokens", "layers")


def latest_rows(path: Path) -> list:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    last = max(r["timestamp"] for r in rows)  # files are appended to: keep the newest run
    return [r for r in rows if r["timestamp"] == last]


def _short(shape: dict) -> str:
    return ",".join(f"{k}={shape[k]}" for k in SHORT_KEYS if k in shape)


def _ms(x):
    return "-" if x is None else (f"{x * 1e3:.1f}us" if x < 1 else f"{x:.3f}ms")


def _e2e(rows: list) -> list:
    """Steps: time, % of the bandwidth peak, cost relative to the AR step. Generate rows:
    per-token time, tokens/forward, host syncs per iteration, peak memory, vs AR."""
    out = [f"  {'op':<26}{'backend':<14}{'P/mode':<16}{'time':>11}{'%peak':>7}{'x AR':>8}  extra"]
    for r in rows:
        s, e = r["shape"], r.get("extra") or {}
        where = str(s.get("P", s.get("mode", "")))
        pk = f"{100 * r['peak_fraction']:.0f}" if r.get("peak_fraction") else "-"
        rel = f"{r['baseline_ms'] / r['median_ms']:.2f}" if r.get("baseline_ms") else "-"
        if r["op"].startswith("step:"):
            rel = f"{r['median_ms'] / r['baseline_ms']:.2f}" if r.get("baseline_ms") else "-"  # cost in AR steps
        ex = ""
        if "tok_per_s" in e:
            sync = e.get("host_syncs_per_iteration")
            mem = e.get("peak_mem_gb")
            ex = (f"{e['tok_per_s']:.1f} tok/s, {e.get('tokens_per_forward', e.get('achieved_mean', 0)):.2f} tok/fwd"
                  + (f", {sync:.1f} syncs/it" if sync is not None else "") + (f", {mem:.1f} GB" if mem else "")
                  + (f", ORACLE drawn {e['drawn_mean']:.2f} achieved {e['achieved_mean']:.2f}"
                     if e.get("oracle") else ""))
        out.append(f"  {r['op'][:25]:<26}{r['backend'][:13]:<14}{where[:15]:<16}{_ms(r['median_ms']):>11}{pk:>7}"
                   f"{rel:>8}  {ex}")
    out.append("  (steps: 'x AR' = cost in AR steps; generate/ORACLE rows: time per token, 'x AR' = speedup)")
    return out


def _winners(out_dir: Path) -> list:
    """Which tridiff backend is fastest per op, counted over shapes: the evidence for
    tridiff._dispatch.AUTO_ORDER_PER_OP ([graph] rows are the same backend, replayed)."""
    wins: dict = {}
    for name in ("attention", "kv_cache", "accept"):
        groups: dict = {}
        for r in latest_rows(out_dir / f"{name}.jsonl"):
            if r["role"] == "tridiff" and not r["backend"].endswith("[graph]"):
                groups.setdefault((r["op"], _short(r["shape"])), []).append(r)
        for (op, _), rs in groups.items():
            best = min(rs, key=lambda r: r["median_ms"])["backend"]
            wins.setdefault(op, {}).setdefault(best, 0)
            wins[op][best] += 1
    if not wins:
        return []
    out = ["== fastest tridiff backend per op (shapes won)"]
    for op, w in wins.items():
        out.append(f"  {op:<24}" + ", ".join(f"{b}: {n}" for b, n in sorted(w.items(), key=lambda x: -x[1])))
    return out


def summarize(out_dir) -> str:
    out_dir = Path(out_dir)
    lines = []
    for name in BENCHES:
        rows = latest_rows(out_dir / f"{name}.jsonl")
        if not rows:
            lines.append(f"== {name}: no rows")
            continue
        r0 = rows[0]
        lines.append(f"== {name} | {r0['device']} | torch {r0['torch']} triton {r0['triton']} "
                     f"| git {r0['git_rev'][:12]}"
                     f" | peaks: copy {r0['peak_copy_gbps']:.0f} GB/s, matmul {r0['peak_matmul_tflops']:.0f} TFLOP/s")
        if name == "e2e":
            lines += _e2e(rows)
            continue
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["op"], _short(r["shape"])), []).append(r)
        lines.append(f"  {'op':<24}{'shape':<40}{'best tridiff':<26}{'%peak':>6}  {'best baseline':<28}{'speedup':>8}")
        for (op, shape), rs in groups.items():
            mine = [r for r in rs if r["role"] == "tridiff"]
            m = min(mine, key=lambda r: r["median_ms"]) if mine else None
            # the row's own comparison (Recorder's group: best baseline of the same shape)
            b = (m["baseline"], m["baseline_ms"]) if m and m["baseline_ms"] else None
            if m is None:
                base = min((r for r in rs if r["role"] == "baseline"), key=lambda r: r["median_ms"])
                b = (base["backend"], base["median_ms"])
            mine_s = f"{m['backend'][:14]} {_ms(m['median_ms'])}" if m else "-"
            pk = f"{100 * m['peak_fraction']:.0f}" if m and m.get("peak_fraction") else "-"
            base_s = f"{b[0][:16]} {_ms(b[1])}" if b else "-"
            sp = f"{m['ratio']:.2f}x" if m and m["ratio"] else "-"
            lines.append(f"  {op[:23]:<24}{shape[:39]:<40}{mine_s:<26}{pk:>6}  {base_s:<28}{sp:>8}")
    lines += _winners(out_dir)
    tpath = out_dir / "e2e_targets.jsonl"
    if tpath.exists() and tpath.read_text().strip():
        t = json.loads(tpath.read_text().splitlines()[-1])
        lines.append(f"== e2e targets ({t['preset']}, weights {t['weight_bytes'] / 1e9:.2f} GB; "
                     "ORACLE = acceptance forced, not a model-quality number)")
        for name, value, goal, verdict in t["targets"]:
            lines.append(f"  {name[:64]:<65}{value[:38]:<39}{goal[:14]:<15}{verdict[:14]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else str(Path(__file__).resolve().parent / "results")
    print(summarize(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
