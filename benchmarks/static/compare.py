"""Before / after two static reports (`python -m benchmarks.static --json ...`), per variant, with the
issue-19 goals checked on the after side.

    python -m benchmarks.static.compare BEFORE.json [BEFORE2.json ...] AFTER.json [--md PATH] [--dtype bf16]
        [--head-dims 64,96,128]

Several before reports: a later one's records replace an earlier one's of the same variant (e.g. a full
report, then a run of one kernel made after it).

Goals (bf16, sm_90, per 128x64-equivalent tile for fwd / dQ, per 64x64-equivalent for dK/dV): forward plain
loop <= 290, dQ <= 270, dK/dV <= 280; every masked loop <= 1.3 x its kernel's plain loop; 0 spills in every
autotuned config at head dims 64, 96, 128; the headline forward (128x64 w8 s3, D=128) at <= 232 registers;
HGMMA only (no HMMA).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Tuple

GOAL_PLAIN = {"fwd": 290, "dq": 270, "dkdv": 280}
HEADLINE = {"fwd": (128, 64, 8, 3), "dq": (128, 64, 8, 2), "dkdv": (32, 128, 8, 2)}  # at head dim 128


def _key(r: Dict) -> Tuple:
    return (r["kernel"], r["dtype"], r["head_dim"], r["block_m"], r["block_n"], r["num_warps"], r["num_stages"])


def _loops(r: Dict, kind: str) -> List[int]:
    return [lp["instructions"] for lp in r.get("loops", []) if lp["kind"] == kind]


def per_goal_tile(r: Dict) -> float:
    """The plain loop scaled to the goal's tile: 128x64 (fwd, dQ) or 64x64 (dK/dV)."""
    plain = _loops(r, "plain")
    if not plain:
        return float("nan")
    area = 128 * 64 if r["kernel"] in ("fwd", "dq") else 64 * 64
    return plain[0] * area / (r["block_m"] * r["block_n"])


def worst_masked_ratio(r: Dict) -> float:
    """The dearest masked loop over the plain loop, per score: masked loops of a 128-wide key tile run
    `masked_block_n`-key tiles (`triton_ops.MASKED_N`), those of a 64-row dK/dV tile `masked_block_m`-row tiles
    (`triton_ops.MASKED_M`)."""
    plain, masked = _loops(r, "plain"), _loops(r, "masked")
    widen = (r["block_m"] * r["block_n"] / (r.get("masked_block_m", r["block_m"])
                                             * r.get("masked_block_n", r["block_n"])))
    return max(masked) * widen / plain[0] if plain and masked else float("nan")


def row(b: Dict, a: Dict) -> str:
    def cell(f, fmt="{}"):
        x, y = (f(b) if b else None), f(a)
        return (fmt.format(x) if x is not None else "-") + " -> " + fmt.format(y)

    def loops(r):  # named by the rule form each evaluates where the report has the names (`sass.rule_lines`)
        return "/".join(f"{lp['rule']} {lp['instructions']}" if lp.get("rule") else str(lp["instructions"])
                        for lp in r.get("loops", []) if lp["kind"] == "masked")
    return (f"| {a['kernel']} | {a['dtype']} | {a['head_dim']} | {a['block_m']}x{a['block_n']} w{a['num_warps']} "
            f"s{a['num_stages']} | {'yes' if a.get('in_autotune') else 'no'} | {cell(lambda r: r['regs'])} | "
            f"{cell(lambda r: r['spill_bytes'])} | {cell(lambda r: r.get('tma', 0))} | "
            f"{cell(lambda r: _loops(r, 'plain')[0] if _loops(r, 'plain') else '-')} | "
            f"{cell(per_goal_tile, '{:.0f}')} | {cell(loops)} | {cell(worst_masked_ratio, '{:.2f}')} |")


def goals(after: List[Dict], head_dims) -> List[str]:
    listed = [r for r in after if r.get("in_autotune") and r["head_dim"] in head_dims and "error" not in r]
    out = []
    for kind, goal in GOAL_PLAIN.items():
        rs = [r for r in listed if r["kernel"] == kind]
        best = min(rs, key=per_goal_tile) if rs else None
        head = [r for r in rs if r["head_dim"] == 128
                and (r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]) == HEADLINE[kind]]
        if best:
            # the best autotuned tile at each head dim: the autotuner can pick it there
            per_d = {d: min((r for r in rs if r["head_dim"] == d), key=per_goal_tile)
                     for d in sorted({r["head_dim"] for r in rs})}
            met_d = [d for d, r in per_d.items() if per_goal_tile(r) <= goal]
            out.append(f"- {kind} plain loop per goal tile <= {goal}: best listed {per_goal_tile(best):.0f} "
                       f"(D={best['head_dim']}, {best['block_m']}x{best['block_n']}), "
                       + (f"headline D=128 {head[0]['block_m']}x{head[0]['block_n']} {per_goal_tile(head[0]):.0f}; "
                          if head else "") + ("met" if head and per_goal_tile(head[0]) <= goal else
                                              "met by the best only" if per_goal_tile(best) <= goal else "not met")
                       + "; best per D: " + ", ".join(
                           f"{d} {per_goal_tile(r):.0f} ({r['block_m']}x{r['block_n']})" for d, r in per_d.items())
                       + f" (met at D {', '.join(map(str, met_d)) or 'none'})")
    worst = max(listed, key=worst_masked_ratio)
    out.append(f"- every masked loop <= 1.3 x plain: worst {worst_masked_ratio(worst):.2f} ({worst['kernel']} "
               f"D={worst['head_dim']} {worst['block_m']}x{worst['block_n']}); "
               f"{'met' if worst_masked_ratio(worst) <= 1.3 else 'not met'}")
    spilling = [r for r in listed if r["spill_bytes"]]
    out.append(f"- 0 spills in every autotuned config at head dims {sorted(head_dims)}: "
               + ("met" if not spilling else "not met: " + ", ".join(
                   f"{r['kernel']} D={r['head_dim']} {r['block_m']}x{r['block_n']} ({r['spill_bytes']} B)"
                   for r in spilling)))
    head = [r for r in listed if r["kernel"] == "fwd" and r["head_dim"] == 128 and (r["block_m"], r["block_n"],
            r["num_warps"], r["num_stages"]) == (128, 64, 8, 3)]
    if head:
        out.append(f"- headline forward (128x64 w8 s3, D=128) <= 232 registers: {head[0]['regs']}; "
                   f"{'met' if head[0]['regs'] <= 232 else 'not met'}")
    hmma = [r for r in listed if r["hmma"]]
    out.append("- HGMMA only, no HMMA: " + ("met" if not hmma else f"not met in {len(hmma)} configs"))
    return out


def markdown(before: Dict, after: Dict, dtype: str, head_dims) -> str:
    bidx = {_key(r): r for r in before["records"]}
    recs = [r for r in after["records"] if r["dtype"] == dtype and r["head_dim"] in head_dims and "error" not in r]
    hb, ha = before["header"], after["header"]
    lines = [f"# Static sm_90 report before / after ({dtype}, head dims {', '.join(map(str, head_dims))})", "",
             f"Before: `{hb['command']}` (triton {hb['triton']}, commit `{hb['git_commit']}`, {hb['date']}). "
             f"After: `{ha['command']}` (triton {ha['triton']}, commit `{ha['git_commit']}`, {ha['date']}). "
             "Launch B=1, Hq=32, Hkv=8, L=16K; no GPU: static instruction counts per loop iteration (one tile). "
             "`/goal tile`: the plain loop scaled to 128x64 (fwd, dQ) or 64x64 (dK/dV). "
             f"Made by `python -m benchmarks.static.compare {' '.join(sys.argv[1:])}`.", "",
             "## Goals (after)", ""] + goals(after["records"], head_dims) + ["",
             "## Per config", "",
             "| kernel | dtype | D | tile | autotune | regs | spill B | TMA instr | plain loop | /goal tile | "
             "masked loops | worst masked/plain |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row(bidx.get(_key(r)), r) for r in recs]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.static.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", metavar="REPORT", help="before report(s), then the after report")
    p.add_argument("--md")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--head-dims", default="64,96,128")
    a = p.parse_args(argv)
    if len(a.reports) < 2:
        p.error("give a before report and an after report")
    loaded = []
    for path in a.reports:
        with open(path, encoding="utf-8") as f:
            loaded.append(json.load(f))
    after = loaded[-1]
    before = dict(header=loaded[-2]["header"], records=[r for d in loaded[:-1] for r in d["records"]])
    if len(loaded) > 2:  # the header says which reports were merged
        before["header"] = dict(before["header"], command=" + ".join(d["header"]["command"] for d in loaded[:-1]),
                                git_commit=", ".join(d["header"]["git_commit"] for d in loaded[:-1]),
                                date=", ".join(d["header"]["date"] for d in loaded[:-1]))
    text = markdown(before, after, a.dtype, [int(x) for x in a.head_dims.split(",")])
    if a.md:
        with open(a.md, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
