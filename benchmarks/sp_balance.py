"""`python -m benchmarks.sp_balance`: how evenly `shard_plan` spreads attention work across ranks.

For each layout and world size: max / mean allowed (query, key) pairs per rank (1.0 = perfect) of our plan
(`shard_plan`, method "balanced"), of zigzag (2P chunks, rank r holds chunks r and 2P-1-r) and of contiguous
chunking, counted exactly from the mask's O(L) fields (`MMAMask.allowed_per_query`). A context-parallel rank's
attention work is its queries' allowed pairs; Ulysses splits heads, so its work is balanced whatever the plan.
Also the plan's build time on this machine's CPU (measured, single run after one warm-up).

Layouts: the five benchmark layouts (`benchmarks/layouts.py`: packed AKI-style rows, padding at the end), plus
``causal`` (one causal document: zigzag's own case) and ``video`` (one long sample: system text, 64-frame
videos of 256 tokens per frame in one user turn with their question, then the answer: MMA look-ahead over
most of the row), built here. Writes benchmarks/results/sp/balance_L<L>.{md,jsonl} with --save.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from .layouts import LAYOUTS, causal_layout, make_layout

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "sp")


def video_ids(L: int, frame: int = 256, frames_per_video: int = 64):
    """One document: system text, then user turns of a 64-frame video + question (one segment) and an answer."""
    mod, seg = [0] * 64, [0] * 64
    s = 0
    while len(mod) < L:
        n_img = frame * frames_per_video
        mod += [1] * n_img + [0] * 200
        seg += [s] * (n_img + 200)
        mod += [0] * 600
        seg += [s + 1] * 600
        s += 2
    mod, seg = mod[:L], seg[:L]
    t = lambda x: torch.tensor([x], dtype=torch.int32)  # noqa: E731
    return t(mod), t(seg), torch.zeros(1, L, dtype=torch.int32)


def layout_ids(name: str, L: int, batch: int = 1):
    if name == "causal":
        lay = causal_layout(batch, L)
        return lay.modality_ids, lay.segment_ids, lay.document_ids
    if name == "video":
        return tuple(t.expand(batch, L).contiguous() for t in video_ids(L))
    lay = make_layout(name, batch, L)
    return lay.modality_ids, lay.segment_ids, lay.document_ids


def measure(name: str, L: int, worlds, batch: int = 1):
    from mma_kernels import MMAMask
    from mma_kernels.distributed import shard_plan

    mask = MMAMask(*layout_ids(name, L, batch))
    rows = []
    for P in worlds:
        shard_plan(mask, P)  # warm-up
        t0 = time.perf_counter()
        ours = shard_plan(mask, P)
        build_ms = (time.perf_counter() - t0) * 1e3
        zig = shard_plan(mask, P, method="zigzag") if (L // P) % 2 == 0 else None  # needs an even shard
        con = shard_plan(mask, P, method="contiguous")
        rows.append(dict(layout=name, seq_len=L, batch=batch, world_size=P, ours=round(ours.imbalance, 4),
                         ours_method=ours.method, ours_chunk=ours.chunk,
                         zigzag=None if zig is None else round(zig.imbalance, 4),
                         contiguous=round(con.imbalance, 4), build_ms=round(build_ms, 1),
                         pairs_total=int(ours.work.sum()), pairs_max_rank=int(ours.work.max())))
    return rows


def markdown(rows, argv) -> str:
    out = [f"# Balance of `shard_plan`: max / mean allowed pairs per rank\n",
           f"`python -m benchmarks.sp_balance {' '.join(argv)}` ({time.strftime('%Y-%m-%d')}, CPU; counts are exact, "
           f"build times measured on this machine). 1.0 = every rank's queries have the same number of allowed "
           f"(query, key) pairs; goal <= 1.05.\n",
           "| layout | L | B | ranks | ours | (cut, tokens/chunk) | zigzag | contiguous | plan build ms |",
           "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['layout']} | {r['seq_len']} | {r['batch']} | {r['world_size']} | **{r['ours']:.4f}** | "
                   f"{r['ours_method']}, {r['ours_chunk']} | {'n/a' if r['zigzag'] is None else format(r['zigzag'], '.4f')} | "
                   f"{r['contiguous']:.4f} | "
                   f"{r['build_ms']} |")
    worst = max(r["ours"] for r in rows)
    out.append(f"\nWorst of ours: {worst:.4f}.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.sp_balance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqlen", type=int, default=32768)
    p.add_argument("--worlds", default="2,4,8")
    p.add_argument("--layouts", default=",".join(LAYOUTS + ("causal", "video")))
    p.add_argument("--batch", type=int, default=1, help="rows per batch (one plan shared by all rows)")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/sp/balance_L<L>[_B<B>].{md,jsonl}")
    a = p.parse_args(argv)
    worlds = [int(x) for x in a.worlds.split(",")]
    rows = []
    for name in a.layouts.split(","):
        rows += measure(name, a.seqlen, worlds, a.batch)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    md = markdown(rows, argv)
    print(md)
    if a.save:
        os.makedirs(RESULTS, exist_ok=True)
        stem = os.path.join(RESULTS, f"balance_L{a.seqlen}" + (f"_B{a.batch}" if a.batch > 1 else ""))
        with open(stem + ".jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        with open(stem + ".md", "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
