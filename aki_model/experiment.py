"""The AKI paper's MMA-vs-causal comparison in miniature: ``python -m aki_model.experiment --seeds 5``.

Task "select" of `aki_model.data`: two images of one coloured shape each, then "what color is the
first / second shape ?". Which image must be read depends on the question: under causal attention
the visual tokens cannot see it and must keep both colours; under MMA they see the question (and
``<|assistant|>``) and can mark which one is asked. Regime where the mechanism should matter: a
shallow LLM (2 layers), few visual tokens (4 per image), a short budget (200 steps, where learning
is under way but not finished). For every seed the same model, data stream, steps and batch are
trained twice, with ``attention="mma"`` and ``attention="causal"`` (equal compute: the same kernel
runs both, only the mask differs). A capacity check trains a causal model with more layers, more
visual tokens and more steps, to show that the task is learnable without MMA.

Writes ``OUT/runs.jsonl`` (one line per run: seed, attention, accuracy, losses, seconds, config),
``OUT/summary.json`` (means, standard deviations, versions, date, command) and ``OUT/summary.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from typing import Dict, List, Optional

from . import train as train_cli


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aki_model.experiment", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds per attention (seed 0..N-1)")
    p.add_argument("--task", default="select", choices=["select", "count", "presence"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--image-tokens", type=int, default=4)
    p.add_argument("--eval-examples", type=int, default=256)
    p.add_argument("--capacity-steps", type=int, default=400, help="steps of the capacity check; 0 skips it")
    p.add_argument("--capacity-layers", type=int, default=4)
    p.add_argument("--capacity-image-tokens", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results/aki", help="where the raw results go")
    return p.parse_args(argv)


def _versions() -> Dict[str, str]:
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "git_commit": commit}


def question_only_prior(task: str, n: int, seed: int) -> float:
    """Accuracy of always giving the most frequent answer (by symmetry over colours, the best
    answer from the question alone) on the ``n`` held-out examples of the eval stream."""
    from .data import SyntheticShapes

    answers = [e["conversation"][-1]["content"] for e in SyntheticShapes(32, seed=seed, task=task).batch(n)]
    return Counter(answers).most_common(1)[0][1] / n


def run_one(attention: str, seed: int, steps: int, layers: int, image_tokens: int, args, tmp: str) -> Dict:
    argv = ["--task", args.task, "--attention", attention, "--seed", str(seed), "--steps", str(steps),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--llm-layers", str(layers),
            "--image-tokens", str(image_tokens), "--eval-examples", str(args.eval_examples),
            "--no-progress", "--log-every", str(max(1, steps // 4)), "--threads", "1",
            "--out", os.path.join(tmp, f"{attention}_{layers}l_{image_tokens}t_s{seed}")]
    s = train_cli.train(train_cli.parse_args(argv))
    return {"attention": attention, "seed": seed, "steps": steps, "llm_layers": layers, "image_tokens": image_tokens,
            "accuracy": s["eval"]["accuracy"], "answer_loss": round(s["eval"]["loss"], 4),
            "first10_loss": round(s["first10_mean"], 4), "last10_loss": round(s["last10_mean"], 4),
            "train_seconds": s["train_seconds"], "parameters": s["parameters"], "argv": argv[:-2]}


def _stats(xs: List[float]) -> Dict[str, float]:
    return {"mean": round(statistics.mean(xs), 4), "std": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    runs: List[Dict] = []
    runs_path = os.path.join(args.out, "runs.jsonl")
    with tempfile.TemporaryDirectory() as tmp, open(runs_path, "w", encoding="utf-8") as log:
        plan = [(a, s, args.steps, args.llm_layers, args.image_tokens) for s in range(args.seeds) for a in ("mma", "causal")]
        if args.capacity_steps:
            plan.append(("causal", 0, args.capacity_steps, args.capacity_layers, args.capacity_image_tokens))
        for attention, seed, steps, layers, tokens in plan:
            r = run_one(attention, seed, steps, layers, tokens, args, tmp)
            r["role"] = "capacity" if (steps, layers, tokens) != (args.steps, args.llm_layers, args.image_tokens) else "compare"
            runs.append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
            print(f"[experiment] {r['role']} {attention} seed {seed}: accuracy {r['accuracy']:.3f}", flush=True)
    compare = [r for r in runs if r["role"] == "compare"]
    by = {a: [r["accuracy"] for r in compare if r["attention"] == a] for a in ("mma", "causal")}
    diffs = [m - c for m, c in zip(by["mma"], by["causal"])]  # paired by seed
    summary = {
        "command": "python -m aki_model.experiment " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
        "versions": _versions(),
        "task": args.task, "regime": {"llm_layers": args.llm_layers, "image_tokens": args.image_tokens,
                                    "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr},
        "question_only_prior": round(question_only_prior(args.task, args.eval_examples, 10_000), 4),
        "accuracy": {a: _stats(v) for a, v in by.items()},
        "mma_minus_causal_paired": _stats(diffs) if diffs else None,
        "capacity_check": [r for r in runs if r["role"] == "capacity"],
    }
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    lines = [f"# MMA vs causal, task {args.task} ({summary['date_utc']})", "",
             f"`{summary['command']}`; versions: {summary['versions']}", "",
             f"Regime: {args.llm_layers} LLM layers, {args.image_tokens} visual tokens, {args.steps} steps x batch "
             f"{args.batch_size}, lr {args.lr}; held-out greedy exact match on {args.eval_examples} examples; "
             f"question-only prior {summary['question_only_prior']:.3f}.", "",
             "| seed | mma | causal |", "| --- | --- | --- |"]
    lines += [f"| {s} | {m:.3f} | {c:.3f} |" for s, (m, c) in enumerate(zip(by["mma"], by["causal"]))]
    for a in ("mma", "causal"):
        st = summary["accuracy"][a]
        lines.append(f"| mean +- std ({a}) | {st['mean']:.3f} +- {st['std']:.3f} | |")
    if diffs:
        st = summary["mma_minus_causal_paired"]
        lines += ["", f"MMA - causal, paired by seed: {st['mean']:+.3f} +- {st['std']:.3f} (min {st['min']:+.3f}, "
                      f"max {st['max']:+.3f})"]
    for r in summary["capacity_check"]:
        lines += ["", f"Capacity check (causal, {r['llm_layers']} layers, {r['image_tokens']} visual tokens, "
                      f"{r['steps']} steps, seed {r['seed']}): accuracy {r['accuracy']:.3f}"]
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


if __name__ == "__main__":
    main()
