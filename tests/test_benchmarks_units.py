"""Benchmark building blocks: layouts, the correctness gate, record schema, report."""
import json
import os

import pytest
import torch

from benchmarks import report
from benchmarks.check import Mismatch, check_close
from benchmarks.kernel_suite import KernelCase, KernelRunner
from benchmarks.layouts import IMAGE_TOKENS, LAYOUTS, LONG_LAYOUTS, ONE_IMAGE_TOKENS, causal_layout, make_layout
from benchmarks.providers import PROVIDERS, Provider
from benchmarks.records import REQUIRED_FIELDS, complete, validate
from benchmarks.timing import Timer
from mma_kernels import MMAMask, mma_attention
from mma_kernels.reference import mma_attention_reference


def _runs(row):
    out, start = [], 0
    for i in range(1, len(row) + 1):
        if i == len(row) or row[i] != row[start]:
            out.append((row[start], i - start))
            start = i
    return out


@pytest.mark.parametrize("name", LAYOUTS + LONG_LAYOUTS)
@pytest.mark.parametrize("seqlen", [300, 2048])
def test_layout_ids_are_a_valid_mma_mask(name, seqlen):
    lay = make_layout(name, 3, seqlen, seed=1)
    for t in (lay.modality_ids, lay.segment_ids, lay.document_ids):
        assert t.shape == (3, seqlen) and t.dtype == torch.int32
    MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)  # validates runs and nesting; raises if invalid
    mod = lay.modality_ids
    assert set(mod.unique().tolist()) <= {-1, 0, 1} and (mod == 1).any()
    for row in mod.tolist():
        images = [n for m, n in _runs(row) if m == 1]
        # every image is 144 tokens (576 in `one_image`), except one cut by the row end
        size = ONE_IMAGE_TOKENS if name == "one_image" else IMAGE_TOKENS
        assert sum(n != size for n in images) <= 1
        pad = [i for i, m in enumerate(row) if m == -1]
        assert pad == list(range(seqlen - len(pad), seqlen))  # padding only at the end
    # images see the question after them: MMA allows more pairs than causal over the same documents
    # (except where a 576-token image is cut by the row end before any question: one_image at 300)
    mma = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids).num_allowed()
    causal = MMAMask(lay.modality_ids, None, lay.document_ids).num_allowed()
    assert (mma >= causal).all()
    if not (name == "one_image" and seqlen < 1024):
        assert (mma > causal).all()


def test_long_video_is_one_document_of_clips_and_questions():
    """`long_video`: one document per row, no padding, clips of CLIP_FRAMES images each seen by its question."""
    from benchmarks.layouts import CLIP_FRAMES

    lay = make_layout("long_video", 2, 8192, seed=2)
    assert (lay.document_ids == 0).all() and (lay.modality_ids != -1).all()
    mask = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
    assert mask.doc_length == 8192 and not mask.pad_keys
    row = lay.modality_ids[0].tolist()
    assert sum(1 for m, _ in _runs(row) if m == 1) >= 2 * CLIP_FRAMES  # several clips fit in 8K
    assert (mask.num_allowed() > MMAMask(lay.modality_ids, None, lay.document_ids).num_allowed()).all()


def test_layouts_deterministic_and_many_short_is_many_documents():
    a, b = make_layout("aki", 2, 4096, seed=3), make_layout("aki", 2, 4096, seed=3)
    assert torch.equal(a.modality_ids, b.modality_ids) and torch.equal(a.segment_ids, b.segment_ids)
    short = make_layout("many_short", 1, 4096).document_ids.unique().numel()
    aki = make_layout("aki", 1, 4096).document_ids.unique().numel()
    assert short > 15 and short > 2 * aki


def test_check_close_accepts_right_and_rejects_wrong():
    lay = make_layout("aki", 1, 512)
    m = MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids)
    q, k, v = (torch.randn(1, 2, 512, 32, dtype=torch.bfloat16) for _ in range(3))
    ref = mma_attention(q, k, v, m)
    check_close(mma_attention_reference(q, k, v, m), ref, lay.valid_rows())
    wrong = mma_attention(q, k, v, MMAMask(lay.modality_ids, None, lay.document_ids))  # no look-ahead
    with pytest.raises(Mismatch):
        check_close(wrong, ref, lay.valid_rows())
    nan = ref.clone()
    nan[0, 0, 3, 0] = float("nan")
    with pytest.raises(Mismatch):
        check_close(nan, ref, lay.valid_rows())


class _CausalPretendingMMA(Provider):
    """A wrong provider: plain causal inside documents where MMA is asked for."""

    name = "wrong"

    def build(self, inp):
        return MMAMask(inp.layout.modality_ids, None, inp.layout.document_ids)

    def forward(self, inp, state):
        return mma_attention(inp.q, inp.k, inp.v, state)


def test_runner_does_not_time_a_wrong_provider(monkeypatch):
    monkeypatch.setitem(PROVIDERS, "wrong", _CausalPretendingMMA)
    runner = KernelRunner(torch.device("cpu"), Timer(torch.device("cpu"), rep_ms=1),
                          ["mma", "wrong", "sdpa_causal"], ["fwd", "bwd"])
    recs = runner.run(KernelCase("fp32", 1, 256, 2, 1, 32, "aki"))
    by = {(r["provider"], r["mode"]): r for r in recs}
    for mode in ("fwd", "bwd"):
        assert by[("mma", mode)]["status"] == "ok" and by[("mma", mode)]["median_ms"] > 0
        assert by[("wrong", mode)]["status"] == "error"
        assert "correctness check failed" in by[("wrong", mode)]["note"]
        assert by[("wrong", mode)].get("median_ms") is None
        assert by[("sdpa_causal", mode)]["status"] == "ok"  # checked against mma with a causal mask
    assert by[("sdpa_causal", "fwd")]["allowed_pairs"] == 256 * 257 // 2


def test_causal_layout_is_plain_causal():
    lay = causal_layout(1, 64)
    assert int(MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids).num_allowed()) == 64 * 65 // 2


def test_record_schema_validation():
    rec = complete({"suite": "kernel", "mode": "fwd", "status": "ok", "median_ms": 1.0})
    assert list(rec)[: len(REQUIRED_FIELDS)] == list(REQUIRED_FIELDS)
    assert validate(rec) == []
    assert validate(dict(rec, status="fine")) and validate(dict(rec, median_ms=None))
    bad = dict(rec)
    del bad["git_commit"]
    assert "missing git_commit" in validate(bad)


def test_report_says_results_are_owed_without_gpu_runs(tmp_path, capsys):
    assert report.find_newest(str(tmp_path)) is None
    report.main(["--results-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "GPU results are still owed" in out and "ms" not in out


def test_report_picks_newest_run_and_updates_readme(tmp_path):
    def run(date, ms):
        d = tmp_path / "nvidia-h100" / date
        d.mkdir(parents=True)
        base = dict(suite="kernel", mode="fwd_bwd", dtype="bf16", batch=1, seqlen=4096, heads_q=32, heads_kv=8,
                    head_dim=128, layout="aki", allowed_pairs=10, tflops=100.0, peak_mem_mib=900.0,
                    status="ok", device="NVIDIA H100", torch="2.11", triton="3.6", git_commit="abc", date=date)
        recs = [dict(base, provider="mma", median_ms=ms), dict(base, provider="sdpa_dense", median_ms=3 * ms),
                dict(base, provider="eager_dense", status="oom", median_ms=None)]
        (d / "results.jsonl").write_text("\n".join(json.dumps(complete(r)) for r in recs) + "\n")
    run("2026-01-01", 1.0)
    run("2026-02-01", 2.0)
    assert report.find_newest(str(tmp_path)).endswith(os.path.join("2026-02-01", "results.jsonl"))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\ntail\n")
    report.main(["--results-root", str(tmp_path), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old" not in text
    assert "| 4K | 1 | 2.00 |" in text and "3.00x" in text and "OOM" in text and "NVIDIA H100" in text


def test_static_merge_unrolled_folds_the_remainder_loop():
    """An unrolled plain loop (2x the HGMMA of the plain loop right after it) and its remainder: one record,
    instructions per tile; masked loops and lone plain loops are left alone."""
    from benchmarks.static.sass import merge_unrolled

    def lp(kind, n, hgmma):
        return dict(kind=kind, instructions=n, hgmma=hgmma, hmma=0)

    loops = [lp("masked", 446, 12), lp("plain", 657, 24), lp("plain", 353, 12), lp("masked", 424, 12)]
    got = merge_unrolled(loops)
    assert [(r["kind"], r["instructions"], r["tiles_per_iteration"]) for r in got] == [
        ("masked", 446, 1), ("plain", 328.5, 2), ("masked", 424, 1)]
    assert got[1]["unrolled_instructions"] == 657 and got[1]["remainder_instructions"] == 353
    same = [lp("masked", 10, 12), lp("masked", 20, 24), lp("plain", 30, 12)]
    assert [r["instructions"] for r in merge_unrolled(same)] == [10, 20, 30]
