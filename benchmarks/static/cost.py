"""Inferred per-head instruction cost of each kernel on each layout: static loop counts x exact tile counts.

    python -m benchmarks.static.cost [--static benchmarks/results/static/sm90.json] \
        [--tiles benchmarks/results/tiles/tiles.jsonl] [--dtype bf16] [--head-dim 128] [--md PATH] \
        [--before OLD.json [--before-tiles OLD_TILES.jsonl]]

Joins the sm_90 report (`python -m benchmarks.static`: static instructions in one iteration of each tile
loop, named by the rule form it evaluates) with the tile suite (`python -m benchmarks --suite tiles`: tiles each loop visits, per
head, exact). For every layout, length and listed tile shape it gives the issued instructions of the tile
loops, and their ratio to the same visits all run as plain tiles. This is a *model* (inferred, not
measured): static counts ignore latency, stalls and the wgmma work that is the same in every loop; it says
how much the masked tiles weigh on a real layout, which the per-loop ratio alone does not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")


def _loops(rec: Dict, kind: str) -> List[int]:
    return [lp["instructions"] for lp in rec.get("loops", []) if lp["kind"] == kind]


def pick_static(records: List[Dict], kernel: str, dtype: str, head_dim: int, bm: int, bn: int) -> Optional[Dict]:
    """The listed (autotune) config of that tile shape; the first one compiled if several are listed."""
    rs = [r for r in records if r["kernel"] == kernel and r["dtype"] == dtype and r["head_dim"] == head_dim
          and r["block_m"] == bm and r["block_n"] == bn and "error" not in r]
    listed = [r for r in rs if r.get("in_autotune")]
    return (listed or rs or [None])[0]


def cost_row(tile: Dict, static: Dict) -> Optional[Dict]:
    """Inferred loop instructions for one tile-suite record, or None when the loops do not line up (e.g.
    fp32 dQ, which runs its tile loops twice)."""
    plain, masked = _loops(static, "plain"), _loops(static, "masked")
    counts = tile.get("masked_loops")
    if len(plain) != 1 or counts is None:
        return None
    by_rule = {lp.get("rule"): lp["instructions"] for lp in static.get("loops", []) if lp["kind"] == "masked"}
    if tile.get("loop_rules") and len(by_rule) == len(masked) and all(by_rule):
        # matched by name (the rule form each loop evaluates: `sass.rule_lines`), whatever ptxas's layout order
        if set(tile["loop_rules"]) != set(by_rule):
            return None
        masked = [by_rule[r] for r in tile["loop_rules"]]
    elif len(masked) != len(counts):  # records without names: the kernels' code order
        return None
    per_loop = [m * c for m, c in zip(masked, counts)]
    total = plain[0] * tile["plain"] + sum(per_loop)
    all_plain = plain[0] * tile["visited"]
    per_tile = tile["block_m"] * tile["block_n"] / (128 * 64)
    return dict(layout=tile["layout"], seqlen=tile["seqlen"], kernel=tile["kernel"],
                tile=f"{tile['block_m']}x{tile['block_n']}",
                config=f"w{static['num_warps']} s{static['num_stages']}", visited=tile["visited"],
                masked_share=round(tile["masked"] / tile["visited"], 3) if tile["visited"] else None,
                plain_loop=plain[0], masked_loops=masked, masked_tiles=counts,
                instructions=total, over_all_plain=round(total / all_plain, 3) if all_plain else None,
                per_128x64=round(total / tile["visited"] / per_tile) if tile["visited"] else None)


def build(static_path, tiles_path: str, dtype: str, head_dim: int):
    """Cost rows of one static report (a path, or several merged: later records first, so they win)."""
    paths = [static_path] if isinstance(static_path, str) else list(static_path)
    loaded = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            loaded.append(json.load(f))
    sdata = dict(header=dict(loaded[-1]["header"], command=" + ".join(d["header"]["command"] for d in loaded),
                             git_commit=", ".join(d["header"]["git_commit"] for d in loaded)),
                 records=[r for d in reversed(loaded) for r in d["records"]])
    with open(tiles_path, encoding="utf-8") as f:
        tiles = [json.loads(line) for line in f if line.strip()]
    rows, missing = [], set()
    for t in tiles:
        s = pick_static(sdata["records"], t["kernel"], dtype, head_dim, t["block_m"], t["block_n"])
        row = cost_row(t, s) if s else None
        if row is None:
            missing.add(f"{t['kernel']} {t['block_m']}x{t['block_n']}")
        else:
            rows.append(row)
    return rows, sdata["header"], tiles[0] if tiles else {}, sorted(missing)


def markdown(rows: List[Dict], sheader: Dict, theader: Dict, dtype: str, head_dim: int, missing, argv,
             before: Optional[Dict] = None) -> str:
    out = [f"# Inferred tile-loop cost per head ({sheader['arch']}, {dtype}, head dim {head_dim})", "",
           f"Command: `python -m benchmarks.static.cost {' '.join(argv)}`. Static report: `{sheader['command']}` "
           f"(triton {sheader['triton']}, commit `{sheader['git_commit']}`, {sheader['date']}). Tile counts: "
           f"tile suite (commit `{theader.get('git_commit')}`, {theader.get('date')}).", "",
           "**Inferred, not measured**: instructions issued by the tile loops = plain loop x plain tiles + each "
           "masked loop x its tiles (static counts per iteration). `x all-plain`: that over the same visits run "
           "as plain tiles; `instructions`: that total per head (compare tile shapes by it); `/128x64`: per "
           "visited tile, scaled to a 128x64 tile. A 128-wide tile's masked tiles are counted and costed in "
           "tiles of its masked loops' width (`masked_block_n`, `triton_ops.MASKED_N`). Masked loops by the rule form "
           "they evaluate, in the tile suite's order (`benchmarks.tiles.QUERY_LOOPS`: before, causal, "
           "span-causal, look, span, look-ahead; `KEY_LOOPS`: key-span, before), or in code order for records "
           "without names."
           + (f" `before`: `/128x64` from the static report `{before['header']['command']}` (commit "
              f"`{before['header']['git_commit']}`), and after / before." if before else ""), "",
           "| layout | L | kernel | tile | config | visited | masked share | plain loop | masked loops "
           "| masked tiles | instructions | x all-plain | /128x64 |" + (" before | after / before |" if before else ""),
           "|" + "---|" * (15 if before else 13)]
    for r in rows:
        line = (f"| {r['layout']} | {r['seqlen'] // 1024}K | {r['kernel']} | {r['tile']} | {r['config']} | "
                f"{r['visited']} | {r['masked_share']} | {r['plain_loop']} | "
                f"{'/'.join(map(str, r['masked_loops']))} | {'/'.join(map(str, r['masked_tiles']))} | "
                f"{r['instructions']:.0f} | {r['over_all_plain']} | {r['per_128x64']} |")
        if before:
            b = before["rows"].get((r["layout"], r["seqlen"], r["kernel"], r["tile"]))
            line += (f" {b['per_128x64']} | {r['per_128x64'] / b['per_128x64']:.3f} |" if b and b["per_128x64"]
                     else " - | - |")
        out.append(line)
    if missing:
        out += ["", "Not joined (no matching static record or loop structure): " + ", ".join(missing) + "."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.static.cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--static", default=os.path.join(RESULTS, "static", "sm90.json"))
    p.add_argument("--tiles", default=os.path.join(RESULTS, "tiles", "tiles.jsonl"))
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=None, help="only this length (tokens)")
    p.add_argument("--md", help="write the markdown table here (default: print it)")
    p.add_argument("--before", nargs="+", help="an earlier static report (several: a later one's records replace "
                                               "an earlier one's): adds its /128x64 and the ratio, per row")
    p.add_argument("--before-tiles", help="the tile suite the earlier report's loops line up with (default: "
                                          "--tiles; a suite from before the loops were named, for an older report)")
    a = p.parse_args(argv)
    rows, sh, th, missing = build(a.static, a.tiles, a.dtype, a.head_dim)
    before = None
    if a.before:
        brows, bh, _, _ = build(a.before, a.before_tiles or a.tiles, a.dtype, a.head_dim)
        before = dict(header=bh, rows={(r["layout"], r["seqlen"], r["kernel"], r["tile"]): r for r in brows})
    if a.seqlen:
        rows = [r for r in rows if r["seqlen"] == a.seqlen]
    if not rows:
        raise SystemExit("no tile record joined a static record: check --dtype/--head-dim, and that the tile suite "
                         "was run with this version (records need `masked_loops`)")
    text = markdown(rows, sh, th, a.dtype, a.head_dim, missing, argv, before)
    if a.md:
        with open(a.md, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {a.md}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
