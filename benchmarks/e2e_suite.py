"""End-to-end suite: one training step (forward + backward, no optimizer) of a Phi-3.5-mini-shaped
decoder with random weights, on packed AKI-style rows, under three attention setups:

  mma          attn_implementation="mma" through `mma_kernels.apply_mma` (ids passed to the model)
  sdpa_dense   sdpa with the dense 4D boolean mask built from the ids each step (the AKI way)
  sdpa_causal  sdpa, plain causal, no mask at all (the ceiling; a different mask, loss not compared)

Every step includes building the mask from the ids. Reported: median step time, tokens/s, peak memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch

from .kernel_suite import DTYPES, _error_text
from .layouts import make_layout
from .providers import dense_allowed
from .timing import Timer, free_memory, is_oom

E2E_PROVIDERS = ("mma", "sdpa_dense", "sdpa_causal")
# Phi-3.5-mini: hidden 3072, 32 heads of 96, MLP 8192, vocab 32064, 32 layers (fewer here, see `layers`).
PHI35 = dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32,
             vocab_size=32064)
TINY = dict(hidden_size=384, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=4, vocab_size=2048)


@dataclass(frozen=True)
class E2ECase:
    dtype: str
    batch: int
    seqlen: int
    layers: int
    layout: str = "aki"
    shape: str = "phi3.5"  # or "tiny" (CPU)


def integration_missing():
    import mma_kernels

    if not hasattr(mma_kernels, "apply_mma"):
        return "mma_kernels.apply_mma (transformers integration) is not available in this checkout"
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (pip install mma-kernels[hf])"
    return None


def _model(case: E2ECase, attn: str, device: torch.device):
    from transformers import Phi3Config, Phi3ForCausalLM

    dims = PHI35 if case.shape == "phi3.5" else TINY
    cfg = Phi3Config(**dims, num_hidden_layers=case.layers, max_position_embeddings=max(4096, case.seqlen),
                     attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0, use_cache=False,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = Phi3ForCausalLM(cfg)
    model = model.to(DTYPES[case.dtype])
    if attn == "mma":
        import mma_kernels

        mma_kernels.apply_mma(model)
    else:
        model.set_attn_implementation("sdpa")
    model.train()
    return model


def _batch(case: E2ECase, vocab: int, device: torch.device):
    lay = make_layout(case.layout, case.batch, case.seqlen).to(device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (case.batch, case.seqlen), generator=g).to(device)
    valid = lay.modality_ids != -1
    labels = torch.where(valid, ids, -100)
    doc = lay.document_ids.long()
    pos = torch.arange(case.seqlen, device=device).expand_as(doc)
    start = torch.cat([torch.ones_like(doc[:, :1], dtype=torch.bool), doc[:, 1:] != doc[:, :-1]], dim=1)
    first = torch.where(start, pos, 0).cummax(dim=1).values
    position_ids = pos - first  # restarts at 0 in each packed document, as with packed HF training
    return lay, ids, labels, position_ids, valid


def run_e2e_case(case: E2ECase, providers, device: torch.device, timer: Timer) -> List[Dict]:
    dims = PHI35 if case.shape == "phi3.5" else TINY
    heads, head_dim = dims["num_attention_heads"], dims["hidden_size"] // dims["num_attention_heads"]
    base = dict(suite="e2e", mode="train_step", dtype=case.dtype, batch=case.batch, seqlen=case.seqlen,
                heads_q=heads, heads_kv=dims["num_key_value_heads"], head_dim=head_dim, layout=case.layout,
                layers=case.layers, timer=timer.name)
    missing = integration_missing()
    lay, ids, labels, position_ids, valid = _batch(case, dims["vocab_size"], device)
    from mma_kernels import MMAMask

    pairs = int(MMAMask(lay.modality_ids, lay.segment_ids, lay.document_ids).num_allowed().sum())
    causal_pairs = case.batch * case.seqlen * (case.seqlen + 1) // 2
    records, losses = [], {}
    for name in providers:
        rec = dict(base, provider=name, allowed_pairs=causal_pairs if name == "sdpa_causal" else pairs,
                   backend="mma" if name == "mma" else "sdpa")
        if missing and name in ("mma", "sdpa_dense"):
            records.append(dict(rec, status="skipped", note=missing))
            continue
        model = None
        try:
            model = _model(case, "mma" if name == "mma" else "sdpa", device)

            def step():
                model.zero_grad(set_to_none=True)
                kw = dict(input_ids=ids, labels=labels, position_ids=position_ids)
                if name == "mma":
                    kw.update(modality_ids=lay.modality_ids, segment_ids=lay.segment_ids,
                              document_ids=lay.document_ids, attention_mask=valid.long())
                elif name == "sdpa_dense":
                    kw.update(attention_mask=dense_allowed(lay))
                loss = model(**kw).loss
                loss.backward()
                return loss.detach()

            losses[name] = float(step())
            note = None
            if name == "sdpa_dense" and "mma" in losses:
                diff = abs(losses[name] - losses["mma"])
                tol = 2e-2 * max(1.0, abs(losses["mma"]))
                note = f"loss {losses[name]:.4f} vs mma {losses['mma']:.4f}"
                rec.update(check="pass" if diff <= tol else "fail", check_err=diff, check_tol=tol)
                if diff > tol:
                    records.append(dict(rec, status="error", note="correctness check failed, not timed: " + note))
                    continue
            elif name == "sdpa_causal":
                note = "ceiling: plain causal over the whole row, loss not compared"
            ms = timer.median_ms(step)
            mem = timer.peak_mib(step)
            rec.update(status="ok", median_ms=ms, peak_mem_mib=mem,
                       tokens_per_s=int(valid.sum()) / (ms * 1e-3), note=note)
        except Exception as exc:  # noqa: BLE001
            rec.update(status="oom" if is_oom(exc) else "error", note=_error_text(exc))
        finally:
            del model
            free_memory()
        records.append(rec)
    ok = {r["provider"]: r for r in records if r["status"] == "ok"}
    if "mma" in ok:
        for r in ok.values():
            r["vs_mma_time"] = r["median_ms"] / ok["mma"]["median_ms"]
            if r.get("peak_mem_mib") and ok["mma"].get("peak_mem_mib"):
                r["vs_mma_mem"] = r["peak_mem_mib"] / ok["mma"]["peak_mem_mib"]
    return records
