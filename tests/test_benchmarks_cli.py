"""CI smoke test: `python -m benchmarks` (the quick CPU preset, reduced to one length) from a subprocess."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from mma_kernels import MMAMask

from benchmarks.layouts import make_layout
from benchmarks.records import MODES, REQUIRED_FIELDS, STATUSES, validate

# one xdist worker runs the whole module (`--dist loadgroup`, pytest.ini): its module-scoped fixtures are built once,
# not once per worker
pytestmark = pytest.mark.xdist_group("benchmarks_cli")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "benchmarks", "--device", "cpu", "--threads", "1", "--no-progress",
           "--output", str(out), "--seqlens", "256", "--e2e-seqlens", "256", "--rep-ms", "20"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def _records(out):
    with open(out / "results.jsonl") as f:
        return [json.loads(line) for line in f]


def test_cpu_run_says_kernel_timings_need_a_gpu(run_dir):
    _, proc = run_dir
    assert "kernel timings need a CUDA GPU" in (proc.stdout + proc.stderr)


def test_console_explains_ratios_checks_and_estimate(run_dir):
    _, proc = run_dir
    assert "CPU run estimate: about" in proc.stderr
    assert "provider time / mma time" in proc.stdout
    checks = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS ", "FAIL "))]
    assert len(checks) >= 8 and all("tolerance" in ln for ln in checks)
    assert all(ln.startswith("PASS") for ln in checks), checks


def _cli(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_refuses_a_cpu_run_over_ten_minutes_unless_forced(tmp_path):
    """The README's custom command on a CPU machine: hours of dense CPU attention. Refused, with the
    estimate and the way out, before anything runs or any file is written."""
    out = tmp_path / "my_run"
    proc = _cli("--device", "cpu", "--seqlens", "4K,16K", "--head-dim", "96", "--heads", "32/8", "--dtype", "bf16",
                "--mode", "fwd_bwd", "--output", str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "CPU run estimate" in proc.stderr and "--force" in proc.stderr
    assert not out.exists()


def test_help_names_the_console_script():
    code = "import sys; sys.argv[0] = 'mma-bench'; from benchmarks.__main__ import main; main(['--help'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: mma-bench"), proc.stdout[:200]
    assert "--force" in proc.stdout and "tiles" in proc.stdout


def test_jsonl_schema_and_statuses(run_dir):
    recs = _records(run_dir[0])
    assert len(recs) > 20
    for r in recs:
        assert validate(r) == [], r
        assert list(r)[: len(REQUIRED_FIELDS)] == list(REQUIRED_FIELDS)
        assert r["status"] in STATUSES and r["mode"] in MODES
        assert r["timer"] == "perf_counter(median)" and r["device"].startswith("cpu")
        assert r["torch"] == torch.__version__ and r["git_commit"] and r["date"]
    by = {(r["suite"], r["provider"], r["mode"], r["layout"]): r for r in recs}
    for lay in ("aki", "many_short"):
        for mode in ("fwd", "bwd", "fwd_bwd"):
            for prov in ("mma", "sdpa_dense", "eager_dense", "sdpa_causal"):
                r = by[("kernel", prov, mode, lay)]
                assert r["status"] == "ok", r
                assert r["median_ms"] > 0 and r["tflops"] > 0 and r["allowed_pairs"] > 0
                assert r["vs_mma_time"] > 0
        assert by[("kernel", "flex", "fwd", lay)]["status"] == "ok"
        assert by[("kernel", "flex", "bwd", lay)]["status"] == "skipped"  # no flex backward on CPU
        assert by[("kernel", "flash_attn", "fwd", lay)]["status"] == "skipped"
        mm = by[("kernel", "mma+mask", "fwd", lay)]
        assert mm["median_ms"] == pytest.approx(by[("kernel", "mma", "fwd", lay)]["median_ms"] + mm["mask_ms"])
    # TFLOP/s count each provider's own allowed pairs: the MMA mask's for mma, whole-row causal for the ceiling
    r = by[("kernel", "mma", "fwd", "aki")]
    lay = make_layout("aki", r["batch"], r["seqlen"], seed=0)
    assert r["allowed_pairs"] == int(MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids).num_allowed().sum())
    assert by[("kernel", "sdpa_causal", "fwd", "aki")]["allowed_pairs"] == r["batch"] * 256 * 257 // 2
    e2e = [r for r in recs if r["suite"] == "e2e"]
    assert {r["provider"] for r in e2e} == {"mma", "sdpa_dense", "sdpa_causal"}
    assert all(r["mode"] == "train_step" and r["layers"] for r in e2e)
    assert by[("e2e", "sdpa_causal", "train_step", "aki")]["status"] == "ok"
    for r in e2e:
        assert r["status"] in ("ok", "skipped"), r  # skipped only while the HF integration is absent
        if r["status"] == "ok":
            assert r["tokens_per_s"] > 0


def test_csv_and_plots_written(run_dir):
    out = run_dir[0]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(_records(out))
    assert set(REQUIRED_FIELDS) <= set(rows[0])
    pngs = sorted(p for p in os.listdir(out / "plots") if p.endswith(".png"))
    assert "kernel_fwd_fp32_h4-2_d64_aki.png" in pngs and any(p.startswith("e2e_") for p in pngs)
    for p in pngs:
        with open(out / "plots" / p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cpu_plots_have_no_memory_panel_and_no_oom_legend(run_dir):
    """On CPU nothing measures memory: one panel (time), and no "x: out of memory" when nothing ran out."""
    from benchmarks.plots import make_plots
    from benchmarks.records import read_jsonl

    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    orig = plt.Figure.savefig

    def keep(fig, *a, **k):
        figs.append(fig)
        return orig(fig, *a, **k)

    recs = read_jsonl(run_dir[0] / "results.jsonl")
    try:
        plt.Figure.savefig = keep
        make_plots(recs, str(run_dir[0] / "plots_check"))
    finally:
        plt.Figure.savefig = orig
    assert figs
    for fig in figs:
        assert len(fig.axes) == 1
        assert "out of memory" not in fig._suptitle.get_text()


def test_report_renders_a_cpu_results_file(run_dir):
    out = run_dir[0]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", "--file", str(out / "results.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| 256 |" in proc.stdout and "tok/s" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_gpu_check_needs_a_gpu_and_plans_three_steps():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "needs a CUDA GPU" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--max-minutes", "30"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for what in ("-m pytest -m cuda", "-m benchmarks --preset full --save-results --resume", "--max-minutes 30",
                 "-m benchmarks.static --arch 90"):
        assert what in proc.stdout, proc.stdout
