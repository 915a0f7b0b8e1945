"""Result records: the schema, the run's environment, and JSON-lines / CSV writers."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import subprocess
from typing import Dict, Iterable, List

import torch

# Every record has at least these keys (None where a value does not apply).
REQUIRED_FIELDS = (
    "suite", "provider", "mode", "dtype", "batch", "seqlen", "heads_q", "heads_kv", "head_dim", "layout",
    "allowed_pairs", "median_ms", "tflops", "peak_mem_mib", "status", "device", "torch", "triton",
    "git_commit", "date",
)
EXTRA_FIELDS = ("timer", "mask_ms", "backend", "tokens_per_s", "layers", "vs_mma_time", "vs_mma_mem", "note",
                "check", "check_err", "check_tol")
SUITES = ("kernel", "e2e")
MODES = ("fwd", "bwd", "fwd_bwd", "train_step")
STATUSES = ("ok", "oom", "error", "skipped")

# FLOPs per allowed (query, key) pair and head: 2 matmuls of 2*D forward; backward 2.5x forward.
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def tflops(mode: str, allowed_pairs: int, heads_q: int, head_dim: int, ms: float):
    if mode not in FLOP_FACTOR or not ms or not allowed_pairs:
        return None
    return FLOP_FACTOR[mode] * 4 * head_dim * allowed_pairs * heads_q / (ms * 1e-3) / 1e12


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def environment(device: torch.device) -> Dict[str, str]:
    """The fields shared by every record of one run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} torch threads)")
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "git_commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def complete(rec: Dict) -> Dict:
    """Fill every schema key (None when absent), required fields first."""
    out = {k: rec.get(k) for k in REQUIRED_FIELDS + EXTRA_FIELDS}
    out.update({k: v for k, v in rec.items() if k not in out})
    return out


def validate(rec: Dict) -> List[str]:
    """Problems with one record (empty list when it fits the schema)."""
    errs = [f"missing {k}" for k in REQUIRED_FIELDS if k not in rec]
    if rec.get("suite") not in SUITES:
        errs.append(f"suite {rec.get('suite')!r}")
    if rec.get("mode") not in MODES:
        errs.append(f"mode {rec.get('mode')!r}")
    if rec.get("status") not in STATUSES:
        errs.append(f"status {rec.get('status')!r}")
    if rec.get("status") == "ok" and not (isinstance(rec.get("median_ms"), (int, float)) and rec["median_ms"] > 0):
        errs.append("status ok without a positive median_ms")
    return errs


def write_jsonl(path: str, rec: Dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, default=str) + "\n")


def save_json_md(folder: str, stem: str, data, text: str) -> None:
    """Write ``stem.json`` (the raw records) and ``stem.md`` (the printed table) under ``folder``."""
    import json
    import os

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{stem}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(folder, f"{stem}.md"), "w") as f:
        f.write(text)


def read_jsonl(path: str) -> List[Dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_csv(path: str, records: Iterable[Dict]) -> None:
    records = list(records)
    keys = list(REQUIRED_FIELDS + EXTRA_FIELDS)
    for r in records:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in records:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
