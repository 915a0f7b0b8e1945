"""`python -m benchmarks.sp_equality`: sharded ops against one process, the table behind tests/test_sp_distributed.py.

Spawns 2 and 4 gloo processes on CPU (Triton cases through the interpreter) over the test module's cases
(and Ulysses over rank pairs x context parallel across them, `hybrid`, on 4),
assembles each op's shards (out, lse, dq, dk, dv) and reports, per op, world size and case: the largest
absolute difference to one process's `mma_attention` on the whole row, and the worst ratio of the error to
the flash-attn tolerance bound (|x - fp64| <= 2 |plain fp32 - fp64| + rounding; <= 1 passes).
Writes benchmarks/results/sp/equality.{md,json} with --save. Needs the repository's tests/ (a clone).
"""
from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "sp")
TESTS = os.path.join(os.path.dirname(HERE), "tests")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, TESTS)
    import torch

    import test_sp_distributed as T
    from sp_cases import spawn

    rows = []
    for world in (2, 4):
        results = spawn(T._worker, world, T.CASES)
        for case in T.CASES:
            ref, mma, plain = T._single(case)
            for op in T.OPS:
                if (case.name, op) not in results[0]:
                    continue
                got = T._assemble(results, case, op)
                diff, ratio = 0.0, 0.0
                for g, r, p, m in zip(got, ref, plain, mma):
                    fin = torch.isfinite(r)
                    diff = max(diff, (g[fin].double() - m[fin].double()).abs().max().item())
                    err = (g.double() - r)[fin].abs().max().item()
                    bound = 2 * (p.double() - r)[fin].abs().max().item() + \
                        (r[fin].float().double() - r[fin]).abs().max().item() + 1e-6
                    ratio = max(ratio, err / bound)
                rows.append(dict(op=op, world=world, case=case.name, backend=case.backend, max_abs_diff=diff,
                                 worst_ratio=ratio))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    md = ["# Sharded ops vs one process (fp32, CPU, gloo)\n",
          f"`python -m benchmarks.sp_equality {' '.join(argv)}` ({time.strftime('%Y-%m-%d')}): max |sharded - "
          f"single-process mma_attention| over out, lse, dq, dk, dv, and the worst error / flash-attn bound "
          f"against the fp64 oracle (<= 1 passes). Cases: tests/test_sp_distributed.py.\n",
          "| op | ranks | case | backend | max abs diff vs one process | worst error / bound |",
          "| --- | ---: | --- | --- | ---: | ---: |"]
    for r in rows:
        md.append(f"| {r['op']} | {r['world']} | {r['case']} | {r['backend']} | {r['max_abs_diff']:.2e} | "
                  f"{r['worst_ratio']:.3f} |")
    text = "\n".join(md) + "\n"
    print(text)
    if "--save" in argv:
        from .records import save_json_md

        save_json_md(RESULTS, "equality", rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
