"""PNG plots: time and peak memory against sequence length, one line per provider."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, List

STYLE = {"mma": ("C0", "-o"), "mma+mask": ("C0", "--o"), "flex": ("C1", "-s"), "flex+mask": ("C1", "--s"),
         "flex_cbm": ("C5", "-P"), "flex_cbm+mask": ("C5", "--P"),
         "sdpa_dense": ("C2", "-^"), "eager_dense": ("C3", "-v"), "sdpa_causal": ("C7", ":D"),
         "flash_attn": ("C8", ":x")}


def group_key(r: Dict) -> tuple:
    if r["suite"] == "e2e":
        return ("e2e", r["mode"], r["dtype"], r.get("layers"), r["layout"])
    return ("kernel", r["mode"], r["dtype"], r["heads_q"], r["heads_kv"], r["head_dim"], r["layout"])


def plot_name(key: tuple) -> str:
    if key[0] == "e2e":
        _, mode, dt, layers, lay = key
        return f"e2e_{mode}_{dt}_{layers}layers_{lay}.png"
    _, mode, dt, hq, hkv, d, lay = key
    return f"kernel_{mode}_{dt}_h{hq}-{hkv}_d{d}_{lay}.png"


def make_plots(records: List[Dict], out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    groups: Dict[tuple, List[Dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    paths = []
    for key, recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if not any(r["status"] == "ok" for r in recs):
            continue
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        for prov in sorted({r["provider"] for r in recs}, key=lambda p: list(STYLE).index(p) if p in STYLE else 99):
            pts = sorted((r for r in recs if r["provider"] == prov), key=lambda r: r["seqlen"])
            ok = [r for r in pts if r["status"] == "ok"]
            if not ok:
                continue
            color, fmt = STYLE.get(prov, (None, "-"))
            ax_t.plot([r["seqlen"] for r in ok], [r["median_ms"] for r in ok], fmt, color=color, label=prov)
            mem = [r for r in ok if r.get("peak_mem_mib")]
            if mem:
                ax_m.plot([r["seqlen"] for r in mem], [r["peak_mem_mib"] for r in mem], fmt, color=color, label=prov)
            oom = [r for r in pts if r["status"] == "oom"]
            if oom:
                ax_t.plot([r["seqlen"] for r in oom], [ok[-1]["median_ms"]] * len(oom), "x", color=color, ms=9)
        lens = sorted({r["seqlen"] for r in recs})
        for ax in (ax_t, ax_m):
            ax.set_xscale("log", base=2)
            ax.set_xticks(lens, [f"{n // 1024}K" if n >= 1024 else str(n) for n in lens])
            ax.minorticks_off()
        ax_t.set(yscale="log", xlabel="sequence length", ylabel="median time (ms)")
        ax_m.set(xlabel="sequence length", ylabel="peak memory (MiB)")
        if not ax_m.lines:
            ax_m.text(0.5, 0.5, "peak memory is measured on CUDA only", ha="center", va="center",
                      transform=ax_m.transAxes)
            ax_m.set_yticks([])
        else:
            ax_m.set_yscale("log")
        ax_t.legend(fontsize=8)
        r0 = recs[0]
        what = (f"train step, {r0.get('layers')} layers" if key[0] == "e2e"
                else f"{r0['mode']}, H={r0['heads_q']}/{r0['heads_kv']}, D={r0['head_dim']}")
        fig.suptitle(f"{key[0]} {what}, {r0['dtype']}, layout {r0['layout']} - {r0['device']} "
                     f"(x: out of memory)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, plot_name(key))
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
