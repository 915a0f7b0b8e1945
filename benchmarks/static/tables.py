"""Before/after table of the autotune lists from a static report made with ``--all``.

    python -m benchmarks.static.tables benchmarks/results/static/sm90.json \
        benchmarks/results/static/former_sm90_bf16.json > benchmarks/results/static/autotune_before_after.md

"Before": the lists before the static pruning (`FORMER` in `benchmarks/static/__main__.py`); "after":
the configs the current lists run at that head dim (``in_autotune``). Several reports (JSON files) can be
given: their records are merged (the first file's record wins for a variant in both).
"""
from __future__ import annotations

import json
import sys
from typing import Dict, List

from .__main__ import FORMER


def _row(r: Dict) -> str:
    loops = lambda k: "/".join(str(lp["instructions"]) for lp in r["loops"] if lp["kind"] == k) or "-"  # noqa: E731
    return (f"| {r['block_m']}x{r['block_n']} w{r['num_warps']} s{r['num_stages']} | {r['regs']} | "
            f"{r['spill_store_bytes']}/{r['spill_load_bytes']} | {r['hgmma']} | {r['hmma']} | {loops('plain')} | "
            f"{loops('masked')} | {r['plain_per_128x64']} |")


def before_after(records: List[Dict], headers: List[Dict]) -> str:
    header = headers[0]
    srcs = "; ".join(f"`{h['command']}` (triton {h['triton']}, {h['date']}, commit `{h['git_commit']}`)"
                     for h in headers)
    out = [f"# Autotune lists before and after the static pruning ({header['arch']})", "",
           f"From {srcs}. Spill B: bytes of local-memory stores/loads in the kernel; loops: static "
           "instructions per tile iteration; /128x64: the plain loop scaled to a 128x64 tile.", ""]
    cols = "| config | regs | spill B (st/ld) | HGMMA | HMMA | plain loop | masked loop | plain /128x64 |"
    for kind in ("fwd", "dq", "dkdv"):
        for dtype in sorted({r["dtype"] for r in records}):
            for d in sorted({r["head_dim"] for r in records}):
                rs = {(r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]): r for r in records
                      if r["kernel"] == kind and r["dtype"] == dtype and r["head_dim"] == d and "error" not in r}
                if not rs or any(k not in rs for k in FORMER[kind]):
                    continue  # only where the whole former list was compiled
                before = [rs[k] for k in FORMER[kind]]
                after = [r for r in rs.values() if r["in_autotune"]]
                for name, sel in (("before", before), ("after", after)):
                    spills = sum(1 for r in sel if r["spill_bytes"])
                    mma_sync = sum(1 for r in sel if r["hmma"])
                    out += [f"### {kind} {dtype} head dim {d}: {name} ({len(sel)} configs, {spills} spilling, "
                            f"{mma_sync} on mma.sync)", "", cols, "|" + "---|" * 8] + [_row(r) for r in sel] + [""]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    records, headers, seen = [], [], set()
    for path in argv:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        headers.append(data["header"])
        for r in data["records"]:
            key = (r["kernel"], r["dtype"], r["head_dim"], r["block_m"], r["block_n"], r["num_warps"], r["num_stages"])
            if key not in seen:
                seen.add(key)
                records.append(r)
    print(before_after(records, headers), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
