"""`python -m benchmarks.mask_build`: FlexAttention BlockMask build time, ours against `create_block_mask`.

For each length and layout (batch rows of packed samples, `benchmarks/layouts.py`):

- ``mmamask_ms``: `MMAMask(...)` from the ids (the O(L) fields every backend uses);
- ``to_block_mask_ms``: `MMAMask.to_block_mask(block)` from those fields (O(L) + O(tiles));
- ``cbm_compiled_ms``: `torch.compile(create_block_mask)` with the contract's mask_mod
  (`mma_kernels.reference.flex_mask_mod`), after one warm-up call; the first call, compilation
  included, is ``cbm_compiled_first_ms``;
- ``cbm_eager_ms``: eager `create_block_mask`, only up to ``--eager-max`` tokens: eagerly it
  materialises the mask function's outputs for all B x L x L pairs, so its memory grows as L^2.

Each record also says whether the two BlockMasks have the same block lists (``lists_equal``:
partial and full, query side and key side, sorted per row) and how many partial / full tiles
there are. Times are medians of ``--reps`` calls (``time.perf_counter``). Raw records go to
stdout as JSON lines (and to ``--output``), with the tool versions and the date.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
import warnings

import torch

from mma_kernels import MMAMask
from mma_kernels.reference import flex_mask_mod

from .layouts import make_layout
from .presets import parse_len
from .records import _git_commit

LISTS = [("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices"),
         ("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")]


def same_lists(a, b) -> bool:
    """Equal partial/full block lists (both directions), indices compared as sets per row."""
    for num_name, idx_name in LISTS:
        n1, n2 = getattr(a, num_name), getattr(b, num_name)
        i1, i2 = getattr(a, idx_name), getattr(b, idx_name)
        if n1.shape != n2.shape or i1.shape != i2.shape or not torch.equal(n1, n2):
            return False
        used = torch.arange(i1.shape[-1], device=i1.device) < n1[..., None]
        s1 = torch.where(used, i1, i1.shape[-1]).sort(-1).values
        s2 = torch.where(used, i2, i2.shape[-1]).sort(-1).values
        if not torch.equal(s1, s2):
            return False
    return True


def _median_ms(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def run_case(name: str, L: int, batch: int, block: int, reps: int, eager_max: int, device: torch.device,
             ours_only: bool = False):
    from torch.nn.attention.flex_attention import create_block_mask

    lay = make_layout(name, batch, L, seed=0).to(device)
    ids = (lay.modality_ids, lay.segment_ids, lay.document_ids)
    MMAMask(*ids).to_block_mask(block)  # warm-up (lazy imports)
    rec = dict(layout=name, seqlen=L, batch=batch, block_size=block, reps=reps)
    rec["mmamask_ms"], mask = _median_ms(lambda: MMAMask(*ids), reps)
    rec["to_block_mask_ms"], ours = _median_ms(lambda: mask.to_block_mask(block), reps)
    rec["ours_total_ms"] = rec["mmamask_ms"] + rec["to_block_mask_ms"]
    rec["partial_tiles"] = int(ours.kv_num_blocks.sum())
    rec["full_tiles"] = int(ours.full_kv_num_blocks.sum())
    rec["tiles"] = batch * ours.kv_indices.shape[-2] * ours.kv_indices.shape[-1]
    if ours_only:
        return rec

    mm = flex_mask_mod(*ids)
    cbm = torch.compile(create_block_mask)
    t0 = time.perf_counter()
    ref = cbm(mm, batch, None, L, L, device=device, BLOCK_SIZE=block)
    rec["cbm_compiled_first_ms"] = (time.perf_counter() - t0) * 1e3
    rec["cbm_compiled_ms"], ref = _median_ms(lambda: cbm(mm, batch, None, L, L, device=device, BLOCK_SIZE=block), reps)
    rec["lists_equal"] = same_lists(ours, ref)
    rec["speedup_vs_compiled"] = rec["cbm_compiled_ms"] / rec["ours_total_ms"]
    del ref
    if L <= eager_max:
        eager = lambda: create_block_mask(mm, batch, None, L, L, device=device, BLOCK_SIZE=block)  # noqa: E731
        rec["cbm_eager_ms"], ref = _median_ms(eager, reps)
        rec["lists_equal_eager"] = same_lists(ours, ref)
        rec["speedup_vs_eager"] = rec["cbm_eager_ms"] / rec["ours_total_ms"]
    else:
        rec["cbm_eager_ms"] = None
        rec["note"] = (f"eager create_block_mask not run above --eager-max={eager_max} tokens: it materialises "
                       f"the mask function's outputs for all {batch} x {L} x {L} pairs (memory grows as L^2)")
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mask_build", description=__doc__.split("\n\n")[0])
    p.add_argument("--seqlens", default="16K,64K,128K", help="comma list (default 16K,64K,128K)")
    p.add_argument("--layouts", default="aki,many_short", help="comma list of benchmarks.layouts names")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block", type=int, default=128, help="BlockMask block size (default 128)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per figure (median); default 3")
    p.add_argument("--eager-max", type=lambda s: parse_len(s), default=16 * 1024,
                   help="longest length for eager create_block_mask (default 16K: O(L^2) memory)")
    p.add_argument("--ours-only", action="store_true", help="time only our build (no create_block_mask)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--output", help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    env = dict(device=(torch.cuda.get_device_name(device) if device.type == "cuda"
                       else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"),
               torch=torch.__version__, python=platform.python_version(), git_commit=_git_commit(),
               date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    for L in (parse_len(s) for s in args.seqlens.split(",") if s):
        for name in (s for s in args.layouts.split(",") if s):
            rec = dict(env, **run_case(name, L, args.batch, args.block, args.reps, args.eager_max, device,
                                                args.ours_only))
            line = json.dumps(rec)
            print(line, flush=True)
            if args.output:
                with open(args.output, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
