"""PNG plots: time and peak memory against sequence length, one line per provider."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, List

STYLE = {"mma": ("C0", "-o"), "mma+mask": ("C0", "--o"), "flex": ("C1", "-s"), "flex+mask": ("C1", "--s"),
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
    from matplotlib.ticker import FuncFormatter, LogLocator

    paths = []
    for key, recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if not any(r["status"] == "ok" for r in recs):
            continue
        has_mem = any(r["status"] == "ok" and r.get("peak_mem_mib") for r in recs)
        any_oom = any(r["status"] == "oom" for r in recs)
        # no memory panel where nothing measured memory (CPU runs)
        fig, axes = plt.subplots(1, 2 if has_mem else 1, figsize=(13 if has_mem else 8.5, 4.6), squeeze=False)
        ax_t, ax_m = axes[0][0], (axes[0][1] if has_mem else None)
        for prov in sorted({r["provider"] for r in recs}, key=lambda p: list(STYLE).index(p) if p in STYLE else 99):
            pts = sorted((r for r in recs if r["provider"] == prov), key=lambda r: r["seqlen"])
            ok = [r for r in pts if r["status"] == "ok"]
            if not ok:
                continue
            color, fmt = STYLE.get(prov, (None, "-"))
            ax_t.plot([r["seqlen"] for r in ok], [r["median_ms"] for r in ok], fmt, color=color, label=prov)
            mem = [r for r in ok if r.get("peak_mem_mib")]
            if mem and ax_m is not None:
                ax_m.plot([r["seqlen"] for r in mem], [r["peak_mem_mib"] for r in mem], fmt, color=color, label=prov)
            oom = [r for r in pts if r["status"] == "oom"]
            if oom:
                ax_t.plot([r["seqlen"] for r in oom], [ok[-1]["median_ms"]] * len(oom), "x", color=color, ms=9)
        lens = sorted({r["seqlen"] for r in recs})
        for ax in [a for a in (ax_t, ax_m) if a is not None]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(lens, [f"{n // 1024}K" if n >= 1024 else str(n) for n in lens])
            ax.minorticks_off()
            ax.set_xlim(lens[0] / 1.25, lens[-1] * 1.25)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.grid(True, which="major", alpha=0.3)
            ax.tick_params(labelsize=10)
            ax.set_xlabel("sequence length", fontsize=11)
        ax_t.set_ylabel("median time (ms)", fontsize=11)
        if ax_m is not None:
            ax_m.set_ylabel("peak memory (MiB)", fontsize=11)
        # legend outside the axes, right of the last panel: never on the lines
        (ax_m or ax_t).legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        r0 = recs[0]
        what = (f"train step, {r0.get('layers')} layers" if key[0] == "e2e"
                else f"{r0['mode']}, H={r0['heads_q']}/{r0['heads_kv']}, D={r0['head_dim']}")
        fig.suptitle(f"{key[0]} {what}, {r0['dtype']}, layout {r0['layout']} - {r0['device']}"
                     + (" (x: out of memory)" if any_oom else ""), fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, plot_name(key))
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
