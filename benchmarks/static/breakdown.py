"""`python -m benchmarks.static.breakdown fwd 128x64x8x3 [--head-dim 128] [--dtype bf16]`: where a masked loop's
instructions beyond the plain loop come from.

Compiles one variant as `python -m benchmarks.static` does (sm_90), and prints, per tile loop, its static
instruction count grouped by the kernel source line nvdisasm attaches to each instruction (``-gi``): the rule
(`_allowed_before` / `_allowed_span`), the score select, the key fields, the K and V loads, the row-max guard,
and the rest (matrix work and softmax, the same in every loop); masked loops show the difference to the plain one.
"""
from __future__ import annotations

import argparse
import collections
import inspect
import os
import sys

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
KEYS = ("rule", "score select", "key fields", "K load", "V load", "m_use", "rest")


def _category(lines, src, rule_lines, key_lines):
    if lines & rule_lines:
        return "rule"
    if lines & key_lines:
        return "key fields"
    for n in sorted(lines):
        t = src[n - 1]
        if "tl.where(ok" in t:
            return "score select"
        if "(v_ptrs" in t:
            return "V load"
        if "(k_ptrs" in t:
            return "K load"
        if "k_doc = tl.load" in t or "k_real" in t or "k_pos = start" in t:
            return "key fields"
        if "m_use = tl.where" in t:
            return "m_use"
    return "rest"


def breakdown(kind: str, key, head_dim: int = 128, dtype: str = "bf16", arch: int = 90):
    from mma_kernels.ops import triton_kernels as tk

    from .__main__ import LAUNCH, mask_functions
    from .capture import capture_launches, compile_launch
    from .sass import classify_loops, disassemble, find_loops, function_lines

    ck = compile_launch(capture_launches(dtype, head_dim, arch=arch, **LAUNCH)[kind], *key, arch)
    instrs, labels = disassemble(ck.asm["cubin"])
    for i in instrs:
        i.lines = {(os.path.basename(f), n) for f, n in i.lines}
    name = os.path.basename(inspect.getsourcefile(tk._fwd_tile.fn))
    src = open(inspect.getsourcefile(tk._fwd_tile.fn), encoding="utf-8").read().splitlines()
    rule = {n for f, n in function_lines(tk._allowed_before, tk._allowed_span, tk._allowed_causal)}
    keyf = {n for f, n in function_lines(tk._span_key_fields, tk._load_key_fields)}
    loops = find_loops(instrs, labels)
    out = []
    for lp, c in zip(loops, classify_loops(instrs, loops, function_lines(*mask_functions()))):
        if c["kind"] == "other":
            continue
        body = [i for i in instrs if lp.start <= i.addr <= lp.end and i.base != "NOP"
                and not any(o.start <= i.addr <= o.end for o in lp.inner)]
        cnt = collections.Counter(
            _category({n for f, n in i.lines if f == name}, src, rule, keyf) for i in body)
        out.append((c["kind"], len(body), cnt))
    return out


def markdown(rows) -> str:
    plain = next(r for r in rows if r[0] == "plain")
    lines = ["| loop | instructions | " + " | ".join(KEYS) + " |", "|" + "---|" * (len(KEYS) + 2)]
    for kind, n, cnt in rows:
        diff = kind != "plain"
        cells = [f"{cnt[k]}" + (f" ({cnt[k] - plain[2][k]:+d})" if diff else "") for k in KEYS]
        lines.append(f"| {kind} | {n}" + (f" ({n - plain[1]:+d})" if diff else "") + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.static.breakdown", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernel", choices=("fwd", "dq"))
    p.add_argument("config", help="block_m x block_n x warps x stages, e.g. 128x64x8x3")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("compiles for a GPU: unset TRITON_INTERPRET")
    from .__main__ import header

    h = header(90, sys.argv[1:] if argv is None else list(argv))
    cmd = h["command"].replace("benchmarks.static", "benchmarks.static.breakdown", 1)
    print(f"sm_90, triton {h['triton']}, torch {h['torch']}, commit `{h['git_commit']}`, {h['date']}. Command: `{cmd}`. "
          "Launch as `python -m benchmarks.static`; masked loops in code order, (+n): over the plain loop.\n")
    print(markdown(breakdown(a.kernel, tuple(int(x) for x in a.config.lower().split("x")), a.head_dim, a.dtype)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
