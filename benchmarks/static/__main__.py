"""`python -m benchmarks.static --arch 90 [--json PATH] [--md PATH] [--all]`: what the kernels compile to.

Compiles fwd, dQ and dK/dV at every autotune config (at head dim 256: those its prune keeps), for bf16
and fp16 and head dims 64, 96, 128, 256,
through the runtime's own launchers and argument specialisation at a realistic launch (B=1, Hq=32,
Hkv=8, L=16K; see `capture.py`), for sm_<arch>, with no GPU. Reports per variant: registers, spill
bytes, shared memory, resident blocks per SM, HGMMA / HMMA / async-copy (LDGSTS) / TMA instruction
counts, and the static instruction count of one iteration of each loop, labelled plain (fully allowed
tiles, no mask arithmetic), masked (the per-element rule) or other. ``in_autotune`` says whether the
config is in the kernel's autotune list and survives its prune at that head dim. ``--all`` adds candidate
tiles outside the lists. Writes JSON (a list of records) and a markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import warnings
from typing import Dict, List, Optional

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default (fusion on), without its warning

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results", "static")
HEAD_DIMS = (64, 96, 128, 256)
DTYPES = ("bf16", "fp16")
LAUNCH = dict(batch=1, heads_q=32, heads_kv=8, seqlen=16384)
# extra tiles compiled with --all (block_m, block_n, num_warps, num_stages): the autotune lists before the
# static pruning (issue 11) and a few more
FORMER = {
    "fwd": [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 2), (64, 64, 4, 2)],
    "dq": [(64, 64, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2)],
    "dkdv": [(64, 64, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2)],
}
CANDIDATES = {
    "fwd": FORMER["fwd"] + [(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 2), (64, 128, 4, 2), (64, 64, 8, 2),
                            (64, 64, 4, 1), (64, 64, 8, 1)],
    "dq": FORMER["dq"] + [(64, 64, 8, 3), (64, 32, 8, 2), (64, 128, 8, 2), (64, 64, 8, 1), (128, 128, 8, 2)],
    "dkdv": FORMER["dkdv"] + [(64, 64, 8, 3), (64, 32, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2), (32, 128, 8, 2), (32, 64, 8, 2)],
}
# the variants the CI test checks (`tests/test_static_report.py`)
HEADLINE = dict(dtype="bf16", head_dim=128)


def mask_functions():
    """The kernel helpers that evaluate the per-element rule: a loop running one of them is `masked`."""
    from mma_kernels.ops import triton_kernels as tk

    return [getattr(tk, n) for n in ("_allowed", "_allowed_before", "_allowed_span", "_allowed_causal",
                                    "_allowed_look", "_allowed_key_span") if hasattr(tk, n)]


def variants(kernels, dtypes, head_dims, with_candidates: bool, only=None, features=(), arch: int = 90,
             seqlen: int = LAUNCH["seqlen"]):
    """(kernel, dtype, head_dim, launch, config key, in_autotune) for every variant to compile."""
    from .capture import autotune_configs, capture_launches, key_of

    out = []
    for dtype in dtypes:
        for d in head_dims:
            launches = capture_launches(dtype, d, features=tuple(features), arch=arch, **dict(LAUNCH, seqlen=seqlen))
            for kind in kernels:
                listed, kept = autotune_configs(kind, launches[kind])
                kept_keys = {key_of(c) for c in kept}
                # head dims over 128 (reported, not a goal): only the configs their prune keeps, unless --all
                keys = [key_of(c) for c in listed if d <= 128 or with_candidates or key_of(c) in kept_keys]
                if with_candidates:
                    keys += [k for k in CANDIDATES[kind] if k not in keys]
                for key in keys:
                    if only is None or key in only.get(kind, ()):
                        out.append((kind, dtype, d, launches[kind], key, key in kept_keys))
    return out


def compile_variant(kind, dtype, head_dim, launch, key, in_autotune, arch, mask_lines) -> Dict:
    from .capture import compile_launch, specialisation
    from .sass import analyse

    bm, bn, warps, stages = key
    rec = dict(kernel=kind, dtype=dtype, head_dim=head_dim, block_m=bm, block_n=bn, num_warps=warps,
               num_stages=stages, in_autotune=in_autotune, arch=f"sm_{arch}", block_d=launch.meta.get("BLOCK_D"))
    t = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ck = compile_launch(launch, bm, bn, warps, stages, arch)
    except Exception as exc:  # noqa: BLE001 - a config that does not compile is a finding, not a crash
        rec.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                   compile_s=round(time.time() - t, 1))
        return rec
    rec["compile_s"] = round(time.time() - t, 1)
    spec = specialisation(ck)
    names = list(spec["signature"])
    rec["aligned_args"] = [names[int(k.strip("(),"))] for k, v in spec["attrs"].items()
                           if ["tt.divisibility", 16] in [list(x) for x in v]]
    rec["i64_args"] = [n for n, t in spec["signature"].items() if t == "i64"]
    rec.update(analyse(ck.asm["cubin"], arch, warps, int(ck.metadata.shared), mask_lines))
    plain = [lp["instructions"] for lp in rec["loops"] if lp["kind"] == "plain"]
    masked = [lp["instructions"] for lp in rec["loops"] if lp["kind"] == "masked"]
    tile = bm * bn / (128 * 64)
    # a key tile wider than MASKED_N walks its masked loops in MASKED_N-key tiles (`triton_ops.MASKED_N`), a dK/dV
    # row tile taller than MASKED_M in MASKED_M-row tiles: their counts are per such tile, and the ratio scales
    # them to the plain tile's area
    mn, mm = launch.meta.get("MASKED_N") or 0, launch.meta.get("MASKED_M") or 0
    rec["masked_block_n"] = min(bn, mn) if kind != "dkdv" and mn else bn
    rec["masked_block_m"] = min(bm, mm) if kind == "dkdv" and mm else bm
    widen = bm * bn / (rec["masked_block_m"] * rec["masked_block_n"])
    rec["plain_per_128x64"] = round(min(plain) / tile) if plain else None
    rec["masked_over_plain"] = round(max(masked) * widen / min(plain), 2) if plain and masked else None
    return rec


def _fmt_loops(r, kind):
    """The loops of one kind, in layout order; a masked loop prefixed by the rule form it evaluates (its name)."""
    xs = [(f"{lp['rule']} " if lp.get("rule") else "") + str(lp["instructions"])
          for lp in r.get("loops", []) if lp["kind"] == kind]
    return "/".join(xs) if xs else "-"


def _fmt_spills(r):
    """Spill instructions (STL + LDL) per loop in code order, then outside every loop; '-' when none."""
    if not r.get("spill_instructions"):
        return "-"
    parts = [f"{lp['kind']} {lp.get('spill_stores', 0) + lp.get('spill_loads', 0)}" for lp in r.get("loops", [])]
    return ", ".join(parts + [f"outside {r.get('spill_instructions_outside_loops', 0)}"])


def markdown(records: List[Dict], header: Dict) -> str:
    launch = header.get("launch", LAUNCH)
    lines = [f"# Static machine-code report, {header['arch']}", "",
             f"triton {header['triton']}, torch {header['torch']}, commit `{header['git_commit']}`, "
             f"{header['date']}. Command: `{header['command']}`.", "",
             f"Launch specialised as the runtime does it: B={launch['batch']}, Hq={launch['heads_q']}, "
             f"Hkv={launch['heads_kv']}, L={launch['seqlen']}. Loop columns: static instructions in one iteration "
             "(one tile) of each loop, in the order ptxas lays them out, a masked loop named by the rule form it "
             "evaluates (`# rule:` marks in `mma_kernels/ops/mask_rules.py`) (an unrolled loop: per tile, its body over the tiles it holds, "
             "with its remainder loop folded in: `sass.merge_unrolled`); `/128x64`: the plain loop scaled to a 128x64 tile. "
             "A 128-wide key tile's masked loops run 64-key tiles (`triton_ops.MASKED_N`), a 64-row dK/dV tile's 32-row "
             "tiles (`triton_ops.MASKED_M`): their counts are per such tile, and `masked/plain` (the dearest masked "
             "loop over the plain loop) compares them per score. "
             "`spill B`: bytes of local-memory stores/loads (STL/LDL) in the whole kernel; `spill instr`: the STL + LDL "
             "instructions in each loop's own body (code order, inner loops excluded) and outside every loop. "
             "`CTAs/SM`: resident blocks per SM from registers, shared memory and warps.", "",
             "| kernel | dtype | D | tile | warps | stages | autotune | regs | spill B (st/ld) | smem KB | CTAs/SM "
             "| HGMMA | HMMA | cp.async | TMA | plain loop | masked loop | other loop | plain /128x64 "
             "| masked/plain | spill instr |",
             "|" + "---|" * 21]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['dtype']} | {r['head_dim']} | {r['block_m']}x{r['block_n']} | "
                         f"{r['num_warps']} | {r['num_stages']} | {'yes' if r['in_autotune'] else 'no'} | "
                         f"error: {r['error'][:80]} |" + " |" * 14)
            continue
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {r['head_dim']} | {r['block_m']}x{r['block_n']} | {r['num_warps']} | "
            f"{r['num_stages']} | {'yes' if r['in_autotune'] else 'no'} | {r['regs']} | "
            f"{r['spill_store_bytes']}/{r['spill_load_bytes']} | {r['smem_bytes'] / 1024:.0f} | {r['ctas_per_sm']} | "
            f"{r['hgmma']} | {r['hmma']} | {r['async_copy']} | {r['tma']} | {_fmt_loops(r, 'plain')} | "
            f"{_fmt_loops(r, 'masked')} | {_fmt_loops(r, 'other')} | {r['plain_per_128x64'] or '-'} | "
            f"{r['masked_over_plain'] or '-'} | {_fmt_spills(r)} |")
    return "\n".join(lines) + "\n"


def header(arch: int, argv, seqlen: int = LAUNCH["seqlen"]) -> Dict:
    import torch
    import triton

    from benchmarks.records import _git_commit

    return dict(arch=f"sm_{arch}", triton=triton.__version__, torch=torch.__version__, git_commit=_git_commit(),
                date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                command="python -m benchmarks.static " + " ".join(argv), launch=dict(LAUNCH, seqlen=seqlen))


def _parse_only(s: Optional[str]):
    """'fwd:128x64x8x3,dq:64x64x4x2' -> {kind: {(bm, bn, w, s)}}"""
    if not s:
        return None
    out: Dict[str, set] = {}
    for part in s.split(","):
        kind, _, cfg = part.partition(":")
        out.setdefault(kind.strip(), set()).add(tuple(int(x) for x in cfg.lower().split("x")))
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.static", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, choices=(80, 90), default=90, help="compute capability (default 90)")
    p.add_argument("--json", help="JSON output (default: benchmarks/results/static/sm<arch>.json with --save)")
    p.add_argument("--md", help="markdown output (default: next to --json, .md)")
    p.add_argument("--save", action="store_true", help="write into benchmarks/results/static/ (to commit)")
    p.add_argument("--all", action="store_true", help="also candidate tiles outside the autotune lists")
    p.add_argument("--kernels", default="fwd,dq,dkdv")
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
    p.add_argument("--features", default="", help="optional kernel paths to switch on: groups,window,padding "
                                                    "(default: none, the plain MMA launch with no padding)")
    p.add_argument("--seqlen", type=int, default=LAUNCH["seqlen"],
                   help=f"the launch's Lq = Lk (default {LAUNCH['seqlen']}; one not a multiple of 16 shows what odd "
                        "lengths cost)")
    p.add_argument("--only", help="only these configs, e.g. fwd:128x64x8x3,dq:64x64x4x2 (block_m x block_n x "
                                  "warps x stages)")
    p.add_argument("--render", metavar="JSON", help="compile nothing: write the markdown of a saved report "
                                                   "(next to it, or --md)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = build_parser().parse_args(argv)
    if a.render:
        with open(a.render, encoding="utf-8") as f:
            data = json.load(f)
        md = a.md or os.path.splitext(a.render)[0] + ".md"
        with open(md, "w", encoding="utf-8") as f:
            f.write(markdown(data["records"], data["header"]))
        print(f"wrote {md}", file=sys.stderr)
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("python -m benchmarks.static compiles for a GPU: unset TRITON_INTERPRET")
    from .sass import function_lines

    mask_lines = function_lines(*mask_functions())
    feats = [f for f in a.features.split(",") if f]
    todo = variants(a.kernels.split(","), a.dtypes.split(","), [int(x) for x in a.head_dims.split(",")], a.all,
                    _parse_only(a.only), feats, a.arch, a.seqlen)
    print(f"compiling {len(todo)} variants for sm_{a.arch} (no GPU needed)", file=sys.stderr, flush=True)
    records = []
    for i, v in enumerate(todo):
        r = dict(compile_variant(*v, a.arch, mask_lines), features=feats)
        records.append(r)
        brief = r.get("error") or (f"regs {r['regs']} spill {r['spill_bytes']} HGMMA {r['hgmma']} HMMA {r['hmma']} "
                                   f"loops plain {_fmt_loops(r, 'plain')} masked {_fmt_loops(r, 'masked')}")
        print(f"[{i + 1}/{len(todo)}] {r['kernel']} {r['dtype']} D={r['head_dim']} {r['block_m']}x{r['block_n']} "
              f"w{r['num_warps']} s{r['num_stages']}: {brief} ({r['compile_s']} s)", file=sys.stderr, flush=True)
    head = dict(header(a.arch, argv, a.seqlen), features=feats)
    js = a.json or (os.path.join(RESULTS, f"sm{a.arch}{'_all' if a.all else ''}.json") if a.save else None)
    md_text = markdown(records, head)
    if js:
        os.makedirs(os.path.dirname(os.path.abspath(js)), exist_ok=True)
        with open(js, "w", encoding="utf-8") as f:
            json.dump(dict(header=head, records=records), f, indent=1)
        md = a.md or os.path.splitext(js)[0] + ".md"
        with open(md, "w", encoding="utf-8") as f:
            f.write(md_text)
        print(f"wrote {js} and {md}", file=sys.stderr)
    else:
        print(md_text)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
