"""`python -m benchmarks.static.ws_probe [--save]`: does this Triton warp-specialize an attention loop on sm_90?

Issue 19 point 4. Compiles, for sm_90 with no GPU, the smallest tutorial-style attention forward (one loop,
K/V through tensor descriptors, 128x64 tile, head dim 128, bf16, 8 warps, 3 stages) with
``tl.range(..., warp_specialize=False)`` and ``=True``, and reports whether the TTGIR holds a
``ttg.warp_specialize`` op (partitions) and what the machine code looks like (registers, loop size). If the
probe gets no partitions, our kernels (five tile loops, masks) get none either: the attribute is dropped.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _probe(Q, K, V, O, L, WS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    pid = tl.program_id(0)
    qd = tl.make_tensor_descriptor(Q, [L, D], [D, 1], [BM, D])
    kd = tl.make_tensor_descriptor(K, [L, D], [D, 1], [BN, D])
    vd = tl.make_tensor_descriptor(V, [L, D], [D, 1], [BN, D])
    q = qd.load([pid * BM, 0])
    m = tl.full([BM], float("-inf"), tl.float32)
    den = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    for n in tl.range(0, L, BN, warp_specialize=WS):
        s = tl.dot(q, kd.load([n, 0]).T)
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m - m_new)
        den = den * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(tl.bfloat16), vd.load([n, 0]), acc * alpha[:, None])
        m = m_new
    od = tl.make_tensor_descriptor(O, [L, D], [D, 1], [BM, D])
    od.store([pid * BM, 0], (acc / den[:, None]).to(tl.bfloat16))


def probe(ws: bool) -> dict:
    from triton.backends.compiler import GPUTarget

    from .sass import disassemble, find_loops, resources

    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "L": "i32", "WS": "constexpr", "BM": "constexpr",
           "BN": "constexpr", "D": "constexpr"}
    src = triton.compiler.ASTSource(_probe, signature=sig, constexprs={"WS": ws, "BM": 128, "BN": 64, "D": 128},
                                    attrs={(i,): [["tt.divisibility", 16]] for i in range(5)})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=3))
    instrs, labels = disassemble(ck.asm["cubin"])
    loops = find_loops(instrs, labels)
    body = [i for lp in loops for i in instrs if lp.start <= i.addr <= lp.end and i.base != "NOP"]
    return dict(warp_specialize=ws, attribute_in_ttgir="tt.warp_specialize" in ck.asm["ttgir"],
                partitions="ttg.warp_specialize" in ck.asm["ttgir"], regs=resources(ck.asm["cubin"])["regs"],
                loops=len(loops), loop_instructions=len(body))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.static.ws_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save", action="store_true", help="write benchmarks/results/static/ws_probe_sm90.md")
    a = p.parse_args(argv)
    from .__main__ import RESULTS, header

    h = header(90, sys.argv[1:] if argv is None else list(argv))
    rows = [probe(ws) for ws in (False, True)]
    keys = list(rows[0])
    text = "\n".join([
        "# Warp specialization on sm_90: probe", "",
        f"triton {h['triton']}, torch {h['torch']}, commit `{h['git_commit']}`, {h['date']}. "
        "Command: `python -m benchmarks.static.ws_probe --save`. No GPU: compiled for sm_90.", "",
        "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
        *("| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows), ""])
    if a.save:
        with open(os.path.join(RESULTS, "ws_probe_sm90.md"), "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
