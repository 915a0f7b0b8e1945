"""`python -m benchmarks.gpu_check`: everything a lent GPU should run, in one command, into one folder.

1. the CUDA tests: ``python -m pytest -m cuda tests`` (log and JUnit XML);
2. the full benchmark preset: ``python -m benchmarks --preset full --save-results`` (raw JSON lines,
   CSV, plots; ``--max-minutes`` / ``--resume`` pass through, so a time-limited loan can finish later);
3. the static machine-code report for this GPU's architecture (``python -m benchmarks.static``);

plus ``nvidia-smi`` and the versions, all under ``benchmarks/results/<device>/<date>/`` (the folder
``--save-results`` writes), and ``gpu_check.json`` with each step's command, exit code and time.
Without a CUDA GPU it says so and exits with status 1; ``--dry-run`` prints the plan anywhere.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def results_dir(device_name: str) -> str:
    from .__main__ import RESULTS_ROOT, _slug

    return os.path.join(RESULTS_ROOT, _slug(device_name), _dt.date.today().isoformat())


def plan(out: str, arch, max_minutes, skip):
    py = sys.executable
    steps = []
    if "tests" not in skip:
        steps.append(("cuda_tests", [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests",
                                     f"--junitxml={os.path.join(out, 'pytest_cuda.xml')}"],
                      os.path.join(out, "pytest_cuda.log")))
    if "bench" not in skip:
        cmd = [py, "-m", "benchmarks", "--preset", "full", "--save-results", "--resume", "--no-progress"]
        if max_minutes:
            cmd += ["--max-minutes", str(max_minutes)]
        steps.append(("benchmarks_full", cmd, os.path.join(out, "benchmarks.log")))
        steps.append(("benchmarks_decode", [py, "-m", "benchmarks", "--suite", "decode", "--save-results"],
                      os.path.join(out, "benchmarks_decode.log")))
    if "static" not in skip and arch:
        steps.append(("static_report", [py, "-m", "benchmarks.static", "--arch", str(arch), "--json",
                                        os.path.join(out, "static", f"sm{arch}.json")],
                      os.path.join(out, "static.log")))
    return steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-minutes", type=float, help="passed to the benchmark run (finish later with the same command)")
    p.add_argument("--skip", default="", help="comma list of steps to skip: tests,bench,static")
    p.add_argument("--dry-run", action="store_true", help="print the folder and the commands, run nothing")
    a = p.parse_args(argv)
    import torch

    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        arch = {9: 90, 8: 80}.get(major)
    elif a.dry_run:
        name, arch = "NVIDIA H100 80GB HBM3 (dry run)", 90
    else:
        print("python -m benchmarks.gpu_check needs a CUDA GPU and found none (torch.cuda.is_available() is "
              "False). On a CPU machine: `python -m benchmarks` (the quick CPU run), `python -m benchmarks.static "
              "--arch 90` (machine code, no GPU needed), `python -m benchmarks --suite tiles`.", file=sys.stderr)
        return 1
    out = results_dir(name)
    steps = plan(out, arch, a.max_minutes, skip)
    print(f"gpu_check: {name} -> {out}")
    for step, cmd, log in steps:
        print(f"  {step}: {' '.join(cmd)}  > {os.path.relpath(log, ROOT)}")
    if a.dry_run:
        return 0
    os.makedirs(os.path.join(out, "static"), exist_ok=True)
    summary = dict(device=name, capability=f"{major}.{minor}", torch=torch.__version__,
                   date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), steps=[])
    try:
        import triton

        summary["triton"] = triton.__version__
    except ImportError:
        summary["triton"] = None
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
        with open(os.path.join(out, "nvidia-smi.txt"), "w", encoding="utf-8") as f:
            f.write(smi)
    except (OSError, subprocess.SubprocessError):
        pass
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for step, cmd, log in steps:
        t = time.time()
        print(f"[{step}] running ... (log: {log})", flush=True)
        with open(log, "w", encoding="utf-8") as f:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        secs = round(time.time() - t, 1)
        summary["steps"].append(dict(step=step, command=" ".join(cmd), returncode=rc, seconds=secs,
                                     log=os.path.relpath(log, out)))
        print(f"[{step}] exit {rc} in {secs} s", flush=True)
        with open(os.path.join(out, "gpu_check.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    failed = [s["step"] for s in summary["steps"] if s["returncode"] != 0]
    print(f"gpu_check: everything is in {out}" + (f"; failed: {failed}" if failed else "; all steps passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
