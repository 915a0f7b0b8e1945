"""`python -m benchmarks.sp_cost`: an inferred cost model of the sequence-parallel attention ops (not measured).

Per rank and per attention layer, for Phi-3.5-vision and Qwen2-VL-7B shapes at 128K, 256K and 1M tokens on 8
ranks, bf16 activations:

* allowed (query, key) pairs per rank, x query heads: counted exactly from the masks' O(L) fields on two
  layouts (``aki``: packed AKI-style samples, `benchmarks/layouts.py`; ``video``: one long sample of 64-frame
  videos, `benchmarks/sp_balance.py`): Ulysses = all pairs x Hq / P on every rank (heads are split, so the
  work is balanced whatever the plan); context parallel = the busiest rank's queries under `shard_plan`
  (ours), zigzag and contiguous chunking;
* bytes each rank sends per layer (it receives as many), forward and backward, from the ops' collectives
  (`mma_kernels/distributed`): Ulysses 4 all-to-alls each way (q, k, v, out; dout, dq, dk, dv), each moving
  (P-1)/P of a shard, KV heads replicated to lcm(Hkv, P); context parallel (all-gather) one all-gather of the
  K/V shards forward, one more plus one all-to-all of dK/dV backward, but only the keys some query of the
  receiving rank may see travel (`ShardPlan.key_routes`, from the mask's key ranges: counted exactly per
  layout), an all-gather's bytes at most; ring pass-KV (modeled, not built): an all-gather's bytes in P-1 steps;
* attention memory per rank per layer: what the op keeps for the backward (saved) and the largest transient
  buffers while it runs (this implementation: context parallel holds the whole row's K/V of one layer, in
  2 copies while gathering and reordering, and as much for dK/dV in the backward; ring would hold 2 K/V shards);
* the combination (`context_parallel_attention(..., ulysses_group=...)`): Ulysses over the Pu = 4 GPUs of a
  node (heads scattered by all-to-all inside the node), context parallel across Pc = 2 nodes on the union of
  the node's positions (the plan coarsened: `ShardPlan.coarsen(4)`); KV heads replicated to lcm(Hkv, Pu);
* time, inferred from assumed hardware (H100 SXM: 400 TFLOP/s dense bf16 reached by the attention kernel,
  NVLink 450 GB/s per direction inside a node, 8 ranks = one node), forward attention FLOPs = 4 x pairs x D
  per head, backward = 2.5 x forward: the communication time an implementation without overlap exposes,
  next to the attention compute time. The combination's cross-node part is assumed at 50 GB/s per GPU
  (400 Gb/s InfiniBand), its in-node part at NVLink speed.

Every figure is inferred from shapes and formulas except the pair counts, which are exact for the layouts.
Writes benchmarks/results/sp/cost_model.{md,json} with --save.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "sp")

MODELS = {  # name: (layers, query heads, kv heads, head dim)
    "Phi-3.5-vision": (32, 32, 32, 96),
    "Qwen2-VL-7B": (28, 28, 4, 128),
}
LENGTHS = (131072, 262144, 1048576)
BYTES = 2  # bf16
FLOPS = 400e12  # reached attention throughput, assumed
LINK = 450e9  # NVLink bytes/s per direction, assumed
XLINK = 50e9  # per-GPU bytes/s across nodes (400 Gb/s InfiniBand), assumed
PU = 4  # the combination: Ulysses over 4 GPUs of a node, context parallel across nodes
GIB = 1 << 30


def pairs(layout: str, L: int, P: int):
    """Exact allowed pairs: total, and the busiest rank's queries under ours / zigzag / contiguous."""
    from mma_kernels import MMAMask
    from mma_kernels.distributed import shard_plan

    from .sp_balance import layout_ids

    mask = MMAMask(*layout_ids(layout, L))
    out = {"total": int(mask.num_allowed().sum())}
    for method in ("balanced", "zigzag", "contiguous"):
        plan = shard_plan(mask, P, method=method)
        out[method] = int(plan.work.max())
        if method == "balanced":
            out["plan"] = f"{plan.method}, {plan.chunk}-token chunks"
            out["keys_moved"] = keys_moved(plan, mask)
            if P % PU == 0:
                coarse = plan.coarsen(PU)
                out["coarse"] = int(coarse.work.max())
                out["coarse_keys_moved"] = keys_moved(coarse, mask)
    return out


def keys_moved(plan, mask) -> int:
    """The busiest rank's keys sent or received by context parallelism's routed exchange (`key_routes`): only
    keys some query of the receiving rank may see travel. An all-gather would move (P - 1) * L / P."""
    r = plan.key_routes(mask)
    P = plan.world_size
    sent = [sum(len(r[a][b]) for b in range(P) if b != a) for a in range(P)]
    recv = [sum(len(r[a][b]) for a in range(P) if a != b) for b in range(P)]
    return max(sent + recv)


def ulysses(L, P, Hq, Hkv, D):
    if Hq % P:
        return None
    hkv = Hkv * (P // math.gcd(Hkv, P))  # replicated KV heads
    q = L // P * Hq * D * BYTES
    kv = L // P * hkv * D * BYTES
    sent = (P - 1) / P * (2 * q + 2 * kv)
    saved = 2 * q + 2 * kv + L // P * Hq * 4  # q, k, v, out (head layout: the same bytes as a shard) + lse
    transient = 2 * (2 * q + 2 * kv)  # exchange buffers and reordered copies
    return dict(fwd_sent=sent, bwd_sent=sent, saved=saved, transient=transient, kv_heads_after=hkv)


def context(L, P, Hq, Hkv, D, keys=None):
    """`keys`: the busiest rank's keys moved by the routed exchange (default: every key, as an all-gather)."""
    q = L // P * Hq * D * BYTES
    kv_shard = L // P * Hkv * D * BYTES
    kv_row = 2 * L * Hkv * D * BYTES  # the whole row's K and V
    gather = (P - 1) * 2 * kv_shard if keys is None else 2 * keys * Hkv * D * BYTES
    saved = 2 * q + 2 * kv_shard + L // P * Hq * 4
    return dict(fwd_sent=gather, bwd_sent=2 * gather, saved=saved, transient=2 * kv_row,
                ring_transient=2 * 2 * kv_shard)


def hybrid(L, P, Hq, Hkv, D, pu=PU, keys=None):
    """Ulysses over `pu` ranks inside a node, context parallel over P / pu nodes (`keys`: as in `context`)."""
    if P % pu or Hq % pu:
        return None
    pc = P // pu
    hkv = Hkv * (pu // math.gcd(Hkv, pu))  # replicated for the Ulysses part
    q = L // P * Hq * D * BYTES
    kv = L // P * hkv * D * BYTES
    a2a = (pu - 1) / pu * (2 * q + 2 * kv)  # inside the node, each way
    kv_super = L // pc * (hkv // pu) * D * BYTES  # a node-level shard of K (or V) for this rank's heads
    gather = (pc - 1) * 2 * kv_super if keys is None else 2 * keys * (hkv // pu) * D * BYTES  # across nodes
    saved = 2 * q + 2 * kv + L // P * Hq * 4
    row = 2 * L * (hkv // pu) * D * BYTES
    return dict(fwd_sent=a2a + gather, bwd_sent=a2a + 2 * gather, saved=saved, transient=2 * row + 2 * (2 * q + 2 * kv),
                in_node=2 * a2a, cross_node=3 * gather)


def rows(layouts, P: int):
    out = []
    for L in LENGTHS:
        counted = {lay: pairs(lay, L, P) for lay in layouts}
        print(f"counted pairs at L={L}", file=sys.stderr, flush=True)
        for model, (layers, Hq, Hkv, D) in MODELS.items():
            u, c, h = ulysses(L, P, Hq, Hkv, D), context(L, P, Hq, Hkv, D), hybrid(L, P, Hq, Hkv, D)
            for lay, cnt in counted.items():
                cr = context(L, P, Hq, Hkv, D, cnt["keys_moved"])
                hr = hybrid(L, P, Hq, Hkv, D, keys=cnt.get("coarse_keys_moved"))
                per_head_flops = 4 * D * 3.5  # forward + backward (2.5x)
                t_u = cnt["total"] / P * Hq * per_head_flops / FLOPS
                t_c = cnt["balanced"] * Hq * per_head_flops / FLOPS
                out.append(dict(
                    model=model, L=L, P=P, layout=lay, Hq=Hq, Hkv=Hkv, D=D, layers=layers,
                    pairs_total=cnt["total"], plan=cnt["plan"],
                    ulysses_pairs_per_rank=None if u is None else cnt["total"] / P * Hq,
                    cp_pairs_ours=cnt["balanced"] * Hq, cp_pairs_zigzag=cnt["zigzag"] * Hq,
                    cp_pairs_contiguous=cnt["contiguous"] * Hq,
                    ulysses=u, context=c, hybrid=h, context_routed=cr, hybrid_routed=hr,
                    keys_moved=cnt["keys_moved"],
                    hybrid_pairs_per_rank=None if h is None or cnt["coarse"] is None else cnt["coarse"] * Hq / PU,
                    hybrid_compute_s=None if h is None or cnt["coarse"] is None else
                    cnt["coarse"] * Hq / PU * per_head_flops / FLOPS,
                    hybrid_comm_s=None if hr is None else hr["in_node"] / LINK + hr["cross_node"] / XLINK,
                    ulysses_compute_s=None if u is None else t_u, cp_compute_s=t_c,
                    ulysses_comm_s=None if u is None else (u["fwd_sent"] + u["bwd_sent"]) / LINK,
                    cp_comm_s=(cr["fwd_sent"] + cr["bwd_sent"]) / LINK,
                ))
    return out


def _g(x):
    return "n/a" if x is None else f"{x / GIB:.2f}"


def markdown(rs, argv):
    o = ["# Sequence-parallel attention: cost model (inferred)\n",
         f"`python -m benchmarks.sp_cost {' '.join(argv)}` ({time.strftime('%Y-%m-%d')}). **Inferred** from shapes "
         f"and formulas (see the script's docstring), bf16, per rank and per attention layer, 8 ranks; pair counts "
         f"exact for the layouts; times assume {FLOPS / 1e12:.0f} TFLOP/s attention and {LINK / 1e9:.0f} GB/s "
         f"links (one H100 node; the Ulysses 4 x CP 2 combination: 2 nodes of 4, {XLINK / 1e9:.0f} GB/s per GPU "
         f"across them). Ulysses needs Hq divisible by the ranks: Qwen2-VL-7B's 28 heads on 8 ranks is "
         f"n/a (the op raises and names context_parallel_attention).\n",
         "## Communication and memory (GiB per rank per layer)\n",
         "Context parallel (CP) sends only the keys the receiving rank's queries may see (`ShardPlan.key_routes`); "
         "this table gives its bound when every key is needed (one long sample: an all-gather's bytes); the second "
         "table gives the bytes per layout.\n",
         "| model | L | Ulysses sent fwd / bwd | CP sent fwd / bwd | Ulysses 4 x CP 2 sent fwd / bwd | Ulysses saved / "
         "transient | CP saved / transient (whole-row K/V) | Ulysses 4 x CP 2 saved / transient | ring pass-KV "
         "transient (modeled) |",
         "| --- | ---: | --- | --- | --- | --- | --- | --- | --- |"]
    seen = set()
    for r in rs:
        key = (r["model"], r["L"])
        if key in seen:
            continue
        seen.add(key)
        u, c = r["ulysses"], r["context"]
        us = "n/a" if u is None else f"{_g(u['fwd_sent'])} / {_g(u['bwd_sent'])}"
        um = "n/a" if u is None else f"{_g(u['saved'])} / {_g(u['transient'])}"
        h = r["hybrid"]
        hs = "n/a" if h is None else f"{_g(h['fwd_sent'])} / {_g(h['bwd_sent'])}"
        hm = "n/a" if h is None else f"{_g(h['saved'])} / {_g(h['transient'])}"
        o.append(f"| {r['model']} | {r['L']} | {us} | {_g(c['fwd_sent'])} / {_g(c['bwd_sent'])} | {hs} | {um} | "
                 f"{_g(c['saved'])} / {_g(c['transient'])} | {hm} | {_g(c['ring_transient'])} |")
    o += ["\n## Work and time per rank per layer (forward + backward)\n",
          "| model | L | layout | plan (ours) | pairs x Hq per rank: Ulysses | CP ours | CP zigzag | CP contiguous | "
          "Ulysses 4 x CP 2 | CP keys moved (busiest rank) | CP sent fwd / bwd GiB | Ulysses 4 x CP 2 sent fwd / bwd GiB | "
          "Ulysses compute / comm ms | CP compute / comm ms | Ulysses 4 x CP 2 compute / comm ms |",
          "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- |"]
    for r in rs:
        up = "n/a" if r["ulysses_pairs_per_rank"] is None else f"{r['ulysses_pairs_per_rank']:.3e}"
        ut = "n/a" if r["ulysses_compute_s"] is None else \
            f"{r['ulysses_compute_s'] * 1e3:.1f} / {r['ulysses_comm_s'] * 1e3:.2f}"
        hp = "n/a" if r["hybrid_pairs_per_rank"] is None else f"{r['hybrid_pairs_per_rank']:.3e}"
        ht = "n/a" if r["hybrid_compute_s"] is None else \
            f"{r['hybrid_compute_s'] * 1e3:.1f} / {r['hybrid_comm_s'] * 1e3:.2f}"
        cr, hr = r["context_routed"], r["hybrid_routed"]
        hs = "n/a" if hr is None else f"{_g(hr['fwd_sent'])} / {_g(hr['bwd_sent'])}"
        o.append(f"| {r['model']} | {r['L']} | {r['layout']} | {r['plan']} | {up} | {r['cp_pairs_ours']:.3e} | "
                 f"{r['cp_pairs_zigzag']:.3e} | {r['cp_pairs_contiguous']:.3e} | {hp} | {r['keys_moved']} | "
                 f"{_g(cr['fwd_sent'])} / {_g(cr['bwd_sent'])} | {hs} | {ut} | "
                 f"{r['cp_compute_s'] * 1e3:.1f} / {r['cp_comm_s'] * 1e3:.2f} | {ht} |")
    return "\n".join(o) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.sp_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--layouts", default="aki,video")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/sp/cost_model.{md,json}")
    a = p.parse_args(argv)
    rs = rows(a.layouts.split(","), a.ranks)
    md = markdown(rs, argv)
    print(md)
    if a.save:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "cost_model.json"), "w") as f:
            json.dump(dict(inferred=True, flops=FLOPS, link_bytes_s=LINK, cross_node_bytes_s=XLINK, ulysses_pu=PU,
                       rows=rs), f, indent=1)
        with open(os.path.join(RESULTS, "cost_model.md"), "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
