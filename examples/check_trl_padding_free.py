"""TRL's padding-free collator (`DataCollatorForLanguageModeling(padding_free=True)`, used by SFTTrainer with
`padding_free=True`) feeding a patched model: the packed row's logits and summed loss equal the samples run one
by one. TRL is not a dependency of the package; run this where `pip install trl` works:

    PYTHONPATH=. python examples/check_trl_padding_free.py
"""
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "tests")


def main():
    import transformers
    import trl
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from mma_kernels import apply_mma
    from test_hf_helpers import model_pair

    torch.set_num_threads(1)
    print(f"# trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    _, m = model_pair("llama")
    apply_mma(m, image_token_id=5, answer_token_id=6)
    m.eval()
    samples = [{"input_ids": [1, 5, 5, 7, 6, 9, 9]}, {"input_ids": [1, 5, 8, 6, 4]},
               {"input_ids": [2, 5, 5, 5, 11, 12, 6, 13]}]
    b = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, return_position_ids=True)(samples)
    print("# batch keys:", sorted(b))
    with torch.no_grad():
        out = m(input_ids=b["input_ids"], position_ids=b["position_ids"], labels=b["labels"])
        singles, total, n = [], 0.0, 0
        for s in samples:
            ids = torch.tensor([s["input_ids"]])
            labels = ids.clone()
            labels[0, 0] = -100  # as the collator labels each sample (its labels also cut the segments)
            lg = m(input_ids=ids, labels=labels).logits
            singles.append(lg[0])
            total += F.cross_entropy(lg[0, :-1], ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    diff = (out.logits[0] - torch.cat(singles)).abs().max().item()
    print(f"packed vs per-sample: max |logit diff| {diff:.1e}; loss {out.loss.item():.6f} vs {total / n:.6f}")
    assert diff < 1e-4 and abs(out.loss.item() - total / n) < 1e-4


if __name__ == "__main__":
    main()
