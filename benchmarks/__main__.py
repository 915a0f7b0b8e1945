"""`python -m benchmarks` / `mma-bench`: MMA against FlexAttention, SDPA and eager, kernel-level and
end to end. See docs/benchmarks.md."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
import warnings
from typing import List, Optional

import torch

from .presets import PRESETS, e2e_cases, kernel_cases, parse_len
from .providers import DEFAULT_ORDER, PROVIDERS
from .records import complete, environment, read_jsonl, validate, write_csv, write_jsonl

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _csv_list(s: str) -> List[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _heads(s: str):
    out = []
    for part in _csv_list(s):
        hq, _, hkv = part.partition("/")
        out.append((int(hq), int(hkv or hq)))
    return out


CPU_LIMIT_MIN = 10  # refuse CPU runs estimated longer than this, unless --force
BENCH_EXTRA = "pip install mma-kernels[bench]"


def _prog() -> str:
    """`mma-bench` when run as the console script, else `python -m benchmarks`."""
    return "mma-bench" if os.path.basename(sys.argv[0] or "").startswith("mma-bench") else "python -m benchmarks"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_prog(), description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="quick (default) or full")
    p.add_argument("--suite", choices=["kernel", "e2e", "all", "tiles", "decode"], default="all",
                   help="default: all (kernel and e2e); tiles: exact tile accounting on CPU (no timing), "
                        "default lengths 16K,64K,128K, every layout; decode: one decoding step over a KV cache "
                        "(decode kernel vs prefill kernel, SDPA, flash_attn_with_kvcache), default 4K..128K")
    p.add_argument("--mode", type=_csv_list, help="kernel modes, comma list of fwd,bwd,fwd_bwd (default: preset's)")
    p.add_argument("--seqlens", type=lambda s: [parse_len(x) for x in _csv_list(s)],
                   help="kernel sequence lengths, e.g. 1K,4K,16K (default: preset's)")
    p.add_argument("--e2e-seqlens", type=lambda s: [parse_len(x) for x in _csv_list(s)])
    p.add_argument("--e2e-layers", type=int, help="decoder layers in the e2e model (default: preset's)")
    p.add_argument("--head-dim", type=lambda s: [int(x) for x in _csv_list(s)], help="e.g. 64,96,128")
    p.add_argument("--heads", type=_heads, help="query/kv heads, e.g. 32/32,32/8")
    p.add_argument("--dtype", type=_csv_list, help="bf16,fp16,fp32")
    p.add_argument("--layouts", type=_csv_list, help="aki,many_short")
    p.add_argument("--tokens", type=lambda s: parse_len(s), help="tokens per batch (batch = tokens // seqlen)")
    p.add_argument("--providers", type=_csv_list, default=DEFAULT_ORDER, help=f"default: {','.join(DEFAULT_ORDER)}")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="default: cuda if available")
    p.add_argument("--threads", type=int, help="torch CPU threads (default on CPU: 1)")
    p.add_argument("--output", default="bench_out", help="folder for results.jsonl, results.csv, plots/ (default: bench_out)")
    p.add_argument("--save-results", action="store_true",
                   help="write into benchmarks/results/<device>/<date>/ (to commit a GPU run) instead of --output")
    p.add_argument("--resume", action="store_true", help="keep the output file and skip cases already in it")
    p.add_argument("--max-minutes", type=float,
                   help="start no new case after this many minutes (finish later with --resume)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench `rep` in ms (CUDA) / minimum timing window (CPU); default 100")
    p.add_argument("--force", action="store_true",
                   help=f"on CPU, run even when the estimate is over {CPU_LIMIT_MIN} minutes")
    p.add_argument("--flex-upto", type=lambda s: parse_len(s), default=16 * 1024,
                   help="tiles suite: run FlexAttention's create_block_mask up to this length (default 16K)")
    return p


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()


_KEYS = {"kernel": ("dtype", "batch", "seqlen", "heads_q", "heads_kv", "head_dim", "layout"),
         "e2e": ("dtype", "batch", "seqlen", "layers", "layout")}


def _case_key(suite: str, rec) -> tuple:
    """Identifies one case, from a record (dict) or a case (dataclass), for --resume."""
    get = rec.get if isinstance(rec, dict) else lambda k: getattr(rec, k)
    return (suite,) + tuple(get(k) for k in _KEYS[suite])


def _fmt_secs(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _tiles(args) -> int:
    from .layouts import LAYOUTS
    from .tiles import run

    torch.set_num_threads(args.threads or 1)
    out = os.path.join(RESULTS_ROOT, "tiles") if args.save_results else os.path.join(args.output, "tiles")
    return run(args.seqlens or [16 * 1024, 64 * 1024, 128 * 1024], args.layouts or list(LAYOUTS), out,
               flex_upto=args.flex_upto)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.suite == "tiles":
        return _tiles(args)
    if args.suite == "decode":
        from .decode_suite import main_from_args

        return main_from_args(args)
    t_start = time.time()
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    if args.threads or dev.type == "cpu":
        # CPU default: 1 thread. These small sizes gain little from threads, and a shared machine's
        # oversubscribed threads make timings slow and erratic (3x on a busy 2-core box).
        torch.set_num_threads(args.threads or 1)
    unknown = [p for p in args.providers if p not in PROVIDERS]
    if unknown:
        raise SystemExit(f"--providers: unknown {unknown}; choose from {list(PROVIDERS)}")
    spec = PRESETS[args.preset][dev.type]
    env = environment(dev)
    if dev.type != "cuda":
        print("No CUDA GPU: kernel timings need a CUDA GPU (the Triton kernel does not run on CPU). "
              "Measuring what runs on CPU at small sizes (mma's PyTorch path, eager flex, SDPA, eager), "
              "with a perf_counter median timer and no peak-memory figures.", file=sys.stderr)

    from .e2e_suite import E2E_PROVIDERS, run_e2e_case
    from .kernel_suite import KernelRunner
    from .timing import Timer

    sweeps = [dict(sw) for sw in spec["kernel"]]
    for sw in sweeps:
        for key, val in (("seqlens", args.seqlens), ("head_dims", args.head_dim), ("heads", args.heads),
                         ("dtypes", args.dtype), ("layouts", args.layouts)):
            if val:
                sw[key] = val
    kcases = kernel_cases(sweeps, args.tokens or spec["tokens"]) if args.suite in ("kernel", "all") else []
    e2e_spec = dict(spec["e2e"])
    if args.e2e_seqlens:
        e2e_spec["seqlens"] = args.e2e_seqlens
    if args.e2e_layers:
        e2e_spec["layers"] = args.e2e_layers
    ecases = e2e_cases(e2e_spec) if args.suite in ("e2e", "all") else []
    modes = args.mode or spec["modes"]

    if dev.type == "cpu":
        from .e2e_suite import PHI35, TINY
        from .estimate import estimate
        from .kernel_suite import DTYPES

        secs, peak = estimate(kcases, ecases, modes, args.providers, DTYPES,
                              lambda c: PHI35 if c.shape == "phi3.5" else TINY, rep_s=args.rep_ms / 1e3)
        print(f"CPU run estimate: about {_fmt_secs(secs)} and {peak / 2**30:.1f} GiB peak memory for "
              f"{len(kcases)} kernel and {len(ecases)} end-to-end cases (a rough model, good to ~2x).", file=sys.stderr)
        if secs > 60 * CPU_LIMIT_MIN and not args.force:
            print(f"Refusing: over {CPU_LIMIT_MIN} minutes on CPU. On CPU these numbers only show that the suite "
                  "works (the Triton kernel needs a CUDA GPU): pick smaller --seqlens / --heads / --head-dim, "
                  "or add --force to run it anyway.", file=sys.stderr)
            return 2

    out_dir = args.output
    if args.save_results:
        if dev.type != "cuda":
            raise SystemExit("--save-results is for GPU runs (benchmarks/results/ holds GPU results only)")
        out_dir = os.path.join(RESULTS_ROOT, _slug(env["device"]), _dt.date.today().isoformat())
    os.makedirs(out_dir, exist_ok=True)
    jsonl = os.path.join(out_dir, "results.jsonl")
    done = set()
    if args.resume and os.path.exists(jsonl):
        done = {_case_key(r["suite"], r) for r in read_jsonl(jsonl)}
    elif os.path.exists(jsonl):
        os.remove(jsonl)

    timer = Timer(dev, rep_ms=args.rep_ms)
    e2e_timer = Timer(dev, warmup_ms=1, rep_ms=max(args.rep_ms, 3000) if dev.type == "cuda" else args.rep_ms)
    runner = KernelRunner(dev, timer, args.providers, modes)
    e2e_providers = [p for p in E2E_PROVIDERS if p in args.providers]
    work = [("kernel", c) for c in kcases] + [("e2e", c) for c in ecases]
    try:
        from tqdm import tqdm
    except ImportError:  # progress bar is optional
        tqdm = None
        if not args.no_progress:
            print(f"(no progress bar: tqdm is not installed; {BENCH_EXTRA})", file=sys.stderr)
    bar = tqdm(total=len(work), disable=args.no_progress, dynamic_ncols=True) if tqdm else None
    n_written, problems, stopped = 0, [], 0
    for suite, case in work:
        if args.max_minutes and time.time() - t_start > 60 * args.max_minutes:
            stopped += 1
            continue
        label = f"{suite}: " + (case.describe() if suite == "kernel" else f"L={case.seqlen} layers={case.layers}")
        if bar:
            bar.set_description(label)
        if _case_key(suite, case) in done:
            if bar:
                bar.update(1)
            continue
        recs = runner.run(case) if suite == "kernel" else run_e2e_case(case, e2e_providers, dev, e2e_timer)
        for r in recs:
            r = complete(dict(env, **r))
            problems += validate(r)
            write_jsonl(jsonl, r)
            n_written += 1
        if bar:
            bar.update(1)
    if bar:
        bar.close()

    records = read_jsonl(jsonl) if os.path.exists(jsonl) else []
    write_csv(os.path.join(out_dir, "results.csv"), records)
    plots = []
    if not args.no_plots and records:
        try:
            from .plots import make_plots

            plots = make_plots(records, os.path.join(out_dir, "plots"))
        except ImportError as exc:
            print(f"plots skipped: {exc.name or exc} is not installed ({BENCH_EXTRA})", file=sys.stderr)
    from .report import RATIO_MEANING, check_lines, summary_lines

    checks = check_lines(records)
    if checks:
        print("\nCorrectness checks (each provider's output against mma before timing; failed ones are not timed):")
        print("\n".join(checks))
    print(f"\nResults ({RATIO_MEANING}):")
    print("\n".join(summary_lines(records)))
    counts = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"\n{n_written} records ({json.dumps(counts)}) -> {jsonl}, results.csv, {len(plots)} plots "
          f"in {time.time() - t_start:.0f} s")
    if stopped:
        print(f"--max-minutes reached: {stopped} cases not run; run the same command with --resume to finish.")
    if dev.type != "cuda":
        print("Kernel timings need a CUDA GPU: these CPU numbers only show the suite works.")
    if problems:
        print("schema problems:", problems[:5], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
