"""`python -m benchmarks.report`: the README's benchmark section from the newest committed GPU run.

Reads ``benchmarks/results/<device>/<date>/results.jsonl`` (newest date wins), prints markdown: the
headline kernel table (time ratios of every baseline against mma), the end-to-end table, and links
to the plots. ``--readme README.md`` rewrites the text between ``<!-- benchmarks:begin -->`` and
``<!-- benchmarks:end -->`` in place. With no GPU results committed it says so, and shows no numbers.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional

from .plots import group_key, plot_name
from .records import read_jsonl

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_ROOT = os.path.join(HERE, "results")
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
BASELINES = ("flex", "sdpa_dense", "eager_dense", "sdpa_causal", "flash_attn")
HEADLINE = dict(dtype="bf16", heads=[(32, 8), (32, 32)], head_dim=[128, 96], layout="aki",
                mode=["fwd_bwd", "fwd"])


def find_newest(root: str = RESULTS_ROOT) -> Optional[str]:
    """Newest results.jsonl under root/<device>/<date>/ (by date folder name, then modification time)."""
    files = glob.glob(os.path.join(root, "*", "*", "results.jsonl"))
    if not files:
        return None
    return max(files, key=lambda f: (os.path.basename(os.path.dirname(f)), os.path.getmtime(f)))


def _cell(rec: Optional[Dict], mma: Optional[Dict]) -> str:
    if rec is None:
        return "-"
    if rec["status"] != "ok":
        return rec["status"].upper() if rec["status"] == "oom" else rec["status"]
    if mma is None or mma.get("status") != "ok":
        return f"{rec['median_ms']:.2f} ms"
    return f"{rec['median_ms'] / mma['median_ms']:.2f}x"


def _fmt_len(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _pick_headline(kernel: List[Dict]) -> Optional[Dict]:
    for mode in HEADLINE["mode"]:
        for hq, hkv in HEADLINE["heads"]:
            for d in HEADLINE["head_dim"]:
                sel = dict(mode=mode, heads_q=hq, heads_kv=hkv, head_dim=d, dtype=HEADLINE["dtype"],
                           layout=HEADLINE["layout"])
                if any(all(r.get(k) == v for k, v in sel.items()) and r["provider"] == "mma" and r["status"] == "ok"
                       for r in kernel):
                    return sel
    # no preferred configuration (e.g. a CPU run): the first one where mma ran
    for mode in HEADLINE["mode"]:
        for r in kernel:
            if r["provider"] == "mma" and r["status"] == "ok" and r["mode"] == mode:
                return {k: r[k] for k in ("mode", "heads_q", "heads_kv", "head_dim", "dtype", "layout")}
    return None


def kernel_table(records: List[Dict], sel: Dict) -> List[str]:
    rows = [r for r in records if r["suite"] == "kernel" and all(r.get(k) == v for k, v in sel.items())]
    by = defaultdict(dict)
    for r in rows:
        by[r["seqlen"]][r["provider"]] = r
    provs = [p for p in BASELINES if any(p in v for v in by.values())]
    extra = [p for p in ("flex+mask",) if any(p in v for v in by.values())]
    head = ["seqlen", "batch", "mma ms", "mma TFLOP/s", "mma MiB"] + [f"{p} / mma" for p in provs + extra]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for L in sorted(by):
        m = by[L].get("mma")
        ok = m is not None and m["status"] == "ok"
        cells = [_fmt_len(L), str((m or next(iter(by[L].values())))["batch"]),
                 f"{m['median_ms']:.2f}" if ok else (m["status"] if m else "-"),
                 f"{m['tflops']:.0f}" if ok and m.get("tflops") else "-",
                 f"{m['peak_mem_mib']:.0f}" if ok and m.get("peak_mem_mib") else "-"]
        cells += [_cell(by[L].get(p), m) for p in provs]
        cells += [_cell(by[L].get(p), by[L].get("mma+mask")) for p in extra]
        out.append("| " + " | ".join(cells) + " |")
    return out


def e2e_table(records: List[Dict]) -> List[str]:
    rows = [r for r in records if r["suite"] == "e2e"]
    if not rows:
        return []
    by = defaultdict(dict)
    for r in rows:
        by[r["seqlen"]][r["provider"]] = r
    provs = [p for p in ("mma", "sdpa_dense", "sdpa_causal") if any(p in v for v in by.values())]
    head = ["seqlen"] + [f"{p} tok/s (MiB)" for p in provs] + [f"{p} / mma time" for p in provs if p != "mma"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for L in sorted(by):
        cells = [_fmt_len(L)]
        for p in provs:
            r = by[L].get(p)
            if r is None or r["status"] != "ok":
                cells.append(r["status"].upper() if r and r["status"] == "oom" else (r["status"] if r else "-"))
            else:
                mem = f" ({r['peak_mem_mib']:.0f})" if r.get("peak_mem_mib") else ""
                cells.append(f"{r['tokens_per_s']:,.0f}{mem}")
        cells += [_cell(by[L].get(p), by[L].get("mma")) for p in provs if p != "mma"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def render(path: Optional[str], link_base: str = ".") -> str:
    """Markdown for the README; `link_base` is the README's folder (plot links are made relative to it)."""
    if path is None:
        return ("**GPU results are still owed**: no GPU run is committed under `benchmarks/results/` yet, so "
                "this README shows no speed or memory numbers. Run `python -m benchmarks --preset full "
                "--save-results` on a CUDA GPU, commit `benchmarks/results/<device>/<date>/`, then "
                "`python -m benchmarks.report --readme README.md`.")
    recs = read_jsonl(path)
    run_dir = os.path.dirname(path)
    rel = os.path.relpath(run_dir, link_base).replace(os.sep, "/")
    r0 = recs[0]
    lines = [f"Newest committed run: **{r0['device']}**, torch {r0['torch']}, triton {r0['triton']}, "
             f"commit `{r0['git_commit']}`, {r0['date']} ([raw JSON lines]({rel}/results.jsonl), "
             f"[CSV]({rel}/results.csv)). Ratios are baseline time / mma time: above 1, mma is faster.", ""]
    kernel = [r for r in recs if r["suite"] == "kernel"]
    sel = _pick_headline(kernel)
    if sel:
        lines += [f"Kernel, {sel['mode']}, {sel['dtype']}, heads {sel['heads_q']}/{sel['heads_kv']}, head dim "
                  f"{sel['head_dim']}, layout `{sel['layout']}` (packed AKI-style samples), constant tokens per "
                  "batch:", ""] + kernel_table(recs, sel) + [""]
        name = plot_name(group_key(dict(sel, suite="kernel")))
        if os.path.exists(os.path.join(run_dir, "plots", name)):
            lines += [f"![kernel {sel['mode']}]({rel}/plots/{name})", ""]
    e2e = e2e_table(recs)
    if e2e:
        e = next(r for r in recs if r["suite"] == "e2e")
        lines += [f"End to end: one training step (forward + backward) of a Phi-3.5-mini-shaped decoder with "
                  f"random weights, {e.get('layers')} layers, {e['dtype']}, batch {e['batch']}:", ""] + e2e + [""]
        name = plot_name(group_key(e))
        if os.path.exists(os.path.join(run_dir, "plots", name)):
            lines += [f"![end to end]({rel}/plots/{name})", ""]
    lines.append(f"All plots: [`{rel}/plots/`]({rel}/plots/). Regenerate this section with "
                 "`python -m benchmarks.report --readme README.md`.")
    return "\n".join(lines)


def update_readme(readme: str, text: str) -> None:
    with open(readme, encoding="utf-8") as f:
        body = f.read()
    if BEGIN not in body or END not in body:
        raise SystemExit(f"{readme}: markers {BEGIN} ... {END} not found; add them where the section goes")
    pre, rest = body.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(f"{pre}{BEGIN}\n{text}\n{END}{post}")


RATIO_MEANING = ("ratio columns (`<provider> 1.84x`) = provider time / mma time on the same case: above 1, "
                 "mma is faster; `+mask` figures include the mask build and are over mma+mask")


def check_lines(records: List[Dict]) -> List[str]:
    """One line per correctness check (each provider's output against mma before timing), with its tolerance."""
    out, seen = [], set()
    for r in records:
        if not r.get("check"):
            continue
        if r["suite"] == "kernel":
            case = (f"kernel {r['layout']} {r['dtype']} B={r['batch']} L={_fmt_len(r['seqlen'])} "
                    f"H={r['heads_q']}/{r['heads_kv']} D={r['head_dim']}")
            what = "max|out - mma| / rms(mma) over non-padding rows"
        else:
            case = f"e2e {r['dtype']} L={_fmt_len(r['seqlen'])} layers={r.get('layers')}"
            what = "|loss - mma loss|"
        key = (case, r["provider"])
        if key in seen or r["provider"] == "mma" or r["provider"].endswith("+mask"):  # mma is the reference
            continue
        seen.add(key)
        err, tol = r.get("check_err"), r.get("check_tol")
        figures = f"{what} = {err:.3g} (tolerance {tol:.3g})" if err is not None and tol is not None else what
        out.append(f"{r['check'].upper():4} {case} {r['provider']}: {figures}")
    return out


def summary_lines(records: List[Dict]) -> List[str]:
    """Short console summary: per case and mode, mma's time and every other provider's ratio to it."""
    groups = defaultdict(dict)
    for r in records:
        k = (r["suite"], r["mode"], r["dtype"], r["seqlen"], r["heads_q"], r["heads_kv"], r["head_dim"], r["layout"])
        groups[k][r["provider"]] = r
    out = []
    for k, provs in groups.items():
        m = provs.get("mma")
        head = f"{k[0]:6} {k[1]:10} {k[2]} L={_fmt_len(k[3]):>5} H={k[4]}/{k[5]} D={k[6]} {k[7]:10}"
        cells = [f"mma {m['median_ms']:.2f} ms" if m and m["status"] == "ok" else f"mma {m['status'] if m else '-'}"]
        cells += [f"{p} {_cell(r, m)}" for p, r in provs.items() if p not in ("mma",)]
        out.append(head + " | " + ", ".join(cells))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-root", default=RESULTS_ROOT)
    p.add_argument("--file", help="a results.jsonl to report instead of the newest committed one")
    p.add_argument("--readme", help="rewrite the marked section of this README in place")
    args = p.parse_args(argv)
    path = args.file or find_newest(args.results_root)
    base = os.path.dirname(os.path.abspath(args.readme)) if args.readme else os.getcwd()
    text = render(path, link_base=base)
    if args.readme:
        update_readme(args.readme, text)
        print(f"updated {args.readme} from {path or 'no GPU results (owed)'}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
