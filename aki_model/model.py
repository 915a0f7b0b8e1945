"""`AKIModel`: SigLIP vision encoder -> Perceiver resampler -> Hugging Face causal LM running MMA.

Each ``<image>`` placeholder in ``input_ids`` is replaced by ``num_image_tokens`` visual tokens.
The LLM runs with ``attn_implementation="mma"`` (`mma_kernels.apply_mma`); the per-token ids
given to it are, over the expanded sequence:

- modality: 1 for visual tokens, 0 for text, -1 for padding;
- segment (`mma_kernels.mma_ids_from_input_ids` with ``answer_token_id=<|assistant|>``): a mutual
  segment closes with each ``<|assistant|>``; so with policy ``"mma"`` every image token attends
  (besides its causal past) to the text that follows it up to and including its turn's
  ``<|assistant|>``, as the AKI reference's mask does for one image; tokens after the last
  ``<|assistant|>`` (answers, or a whole caption without one) get no look-ahead. Answer tokens
  stay causal and are never visible to an image. Several images / turns: each turn's images see
  that turn's text (the reference handles one image).

``config.attention="causal"`` runs the same kernel with the ``"causal"`` policy (the ablation).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import AKIConfig
from .processor import IGNORE_INDEX
from .resampler import PerceiverResampler

WEIGHTS_NAME = "model.safetensors"


@dataclass
class AKIOutput:
    """``logits`` [B, L, V] are aligned with ``input_ids``: position j predicts token j + 1 (an
    ``<image>`` placeholder carries the logits of its image's last visual token). ``loss`` is the
    mean next-token cross-entropy over the labelled tokens. ``inputs`` holds what the LLM was given
    (expanded sequence, see `AKIModel.build_inputs`)."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    inputs: Optional[Dict[str, torch.Tensor]] = None

    def __getitem__(self, key):
        return getattr(self, key)


def _canonical(key: str) -> str:
    # transformers < 5.20 nests SigLIP's weights under `vision_model.`; checkpoints never do.
    return key.replace("vision_encoder.vision_model.", "vision_encoder.", 1)


class AKIModel(nn.Module):
    """The AKI multimodal model (see module docstring). Build with ``AKIModel(AKIConfig.tiny())``,
    ``AKIModel.from_pretrained(dir)`` or `aki_model.weights.load_aki_checkpoint`."""

    def __init__(self, config: AKIConfig):
        super().__init__()
        from transformers import AutoModelForCausalLM, SiglipVisionModel

        import mma_kernels

        self.config = config
        vcfg = config.build_vision_config()
        tcfg = config.build_text_config()
        self.vision_encoder = SiglipVisionModel(vcfg)
        self.vision_tokenizer = PerceiverResampler(
            dim=vcfg.hidden_size, dim_inner=tcfg.hidden_size, depth=config.resampler_depth,
            dim_head=config.resampler_dim_head, heads=config.resampler_heads,
            num_latents=config.num_image_tokens, ff_mult=config.resampler_ff_mult,
        )
        self.lang_model = AutoModelForCausalLM.from_config(tcfg)
        if config.lm_head_bias:
            old = self.lang_model.get_output_embeddings()
            self.lang_model.set_output_embeddings(nn.Linear(old.in_features, old.out_features, bias=True))
        mma_kernels.apply_mma(self.lang_model, policy=config.policy)
        if config.freeze_vision_encoder:
            self.vision_encoder.requires_grad_(False)

    # ------------------------------------------------------------------ vision
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lang_model.parameters()).dtype

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> visual tokens [N, num_image_tokens, llm_hidden]."""
        pv = pixel_values.to(device=self.device, dtype=next(self.vision_encoder.parameters()).dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_encoder):
            feats = self.vision_encoder(pixel_values=pv).last_hidden_state
        return self.vision_tokenizer(feats.to(self.dtype))

    # ------------------------------------------------------------------ inputs
    def build_inputs(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                     attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None
                     ) -> Dict[str, torch.Tensor]:
        """Expand every ``<image>`` of ``input_ids`` [B, L] into its visual tokens.

        The k-th placeholder of row b takes ``pixel_values[b, k]``. Returns, over the expanded
        length Lx: ``inputs_embeds`` [B, Lx, D], ``attention_mask``, ``position_ids``,
        ``modality_ids``, ``segment_ids`` (all [B, Lx]), ``labels`` (if given) and ``index`` [B, L]:
        the expanded position of the last token each input token became. Rows keep the padding
        side of ``input_ids`` (left padding stays left)."""
        from mma_kernels import mma_ids_from_input_ids

        cfg = self.config
        dev = self.device
        input_ids = input_ids.to(dev)
        B, L = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(dev)
        valid = attention_mask.bool()
        mod, seg = mma_ids_from_input_ids(input_ids, cfg.image_token_id, cfg.assistant_token_id, attention_mask)
        is_img = mod == 1
        n_img = is_img.sum(dim=1)
        T = cfg.num_image_tokens
        if int(n_img.sum()):
            if pixel_values is None:
                raise ValueError("input_ids contain <image> placeholders but no pixel_values were given")
            if pixel_values.dim() == 4:
                pixel_values = pixel_values[:, None]
            if pixel_values.dim() != 5 or pixel_values.shape[0] != B:
                raise ValueError(f"pixel_values: expected [B={B}, images, 3, H, W], got {tuple(pixel_values.shape)}")
            if int(n_img.max()) > pixel_values.shape[1]:
                raise ValueError(f"a row has {int(n_img.max())} <image> placeholders but pixel_values holds "
                                 f"{pixel_values.shape[1]} images per row")
            used = torch.arange(pixel_values.shape[1], device=dev)[None, :] < n_img[:, None]
            vis = self.encode_images(pixel_values.to(dev)[used])  # [P, T, D], row-major over (b, k)
        else:
            vis = None

        counts = torch.where(is_img, T, 1)
        new_len = counts.sum(dim=1)
        Lx = int(new_len.max())
        left = bool((~valid[:, 0]).any()) and bool(valid[:, -1].all())
        offset = (Lx - new_len) if left else torch.zeros_like(new_len)
        end = offset[:, None] + counts.cumsum(dim=1) - 1  # last expanded position of each input token
        start = end - counts + 1
        # source token and offset inside the image, for every filled expanded position
        flat_counts = counts.flatten()
        tok = torch.repeat_interleave(torch.arange(B * L, device=dev), flat_counts)
        first = torch.repeat_interleave(flat_counts.cumsum(0) - flat_counts, flat_counts)
        within = torch.arange(tok.numel(), device=dev) - first
        b_of, j_of = tok // L, tok % L
        pos = start.flatten()[tok] + within
        src = torch.full((B, Lx), -1, dtype=torch.long, device=dev)
        src[b_of, pos] = j_of
        kin = torch.zeros((B, Lx), dtype=torch.long, device=dev)
        kin[b_of, pos] = within
        filled = src >= 0
        srcc = src.clamp(min=0)

        embed = self.lang_model.get_input_embeddings()
        x = embed(input_ids).gather(1, srcc[..., None].expand(-1, -1, embed.embedding_dim))
        xvalid = filled & valid.gather(1, srcc)
        xmod = torch.where(xvalid, mod.gather(1, srcc), -1)
        if vis is not None:
            pnum = (is_img.flatten().long().cumsum(0) - 1).view(B, L)  # placeholder number, row-major
            vis_pos = xmod == 1
            x = x.clone()
            x[vis_pos] = vis[pnum.gather(1, srcc)[vis_pos], kin[vis_pos]].to(x.dtype)
        x = torch.where(xvalid[..., None], x, torch.zeros((), dtype=x.dtype, device=dev))
        am = xvalid.long()
        out = {
            "inputs_embeds": x,
            "attention_mask": am,
            "position_ids": (am.cumsum(dim=1) - 1).clamp(min=0),
            "modality_ids": xmod,
            "segment_ids": torch.where(filled, seg.gather(1, srcc), 0),
            "index": end,
        }
        if labels is not None:
            lab = labels.to(dev).gather(1, srcc)
            out["labels"] = torch.where(xvalid & (xmod == 0), lab, IGNORE_INDEX)
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                **lm_kwargs) -> AKIOutput:
        """Loss (if ``labels``, given over ``input_ids`` with -100 for unlabelled tokens) and logits
        aligned with ``input_ids`` (see `AKIOutput`)."""
        inp = self.build_inputs(input_ids, pixel_values, attention_mask)
        out = self.lang_model(
            inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"],
            position_ids=inp["position_ids"], modality_ids=inp["modality_ids"],
            segment_ids=inp["segment_ids"], use_cache=False, **lm_kwargs,
        )
        logits = out.logits.gather(1, inp["index"][..., None].expand(-1, -1, out.logits.shape[-1]))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                                   ignore_index=IGNORE_INDEX)
        return AKIOutput(loss=loss, logits=logits, inputs=inp)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, max_new_tokens: int = 20,
                 do_sample: bool = False, **generate_kwargs) -> torch.Tensor:
        """Autoregressive decoding with a KV cache through the LLM's ``generate`` (greedy by default;
        ``do_sample=True`` with ``temperature``/``top_k``/``top_p`` for sampling). Batches may be
        left- or right-padded (right padding is moved to the left). Stops at EOS (``<|endoftext|>``).
        Returns ``input_ids`` followed by the new tokens [B, L + new] (padding after EOS)."""
        dev = self.device
        input_ids = input_ids.to(dev)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(dev)
        if not bool(attention_mask[:, -1].all()):  # right padding -> left padding
            shift = (attention_mask.flip(1).cumsum(1) == 0).sum(1)
            idx = (torch.arange(input_ids.shape[1], device=dev)[None] - shift[:, None]) % input_ids.shape[1]
            input_ids, attention_mask = input_ids.gather(1, idx), attention_mask.gather(1, idx)
        inp = self.build_inputs(input_ids, pixel_values, attention_mask)
        generate_kwargs.setdefault("eos_token_id", self.config.eos_token_id)
        generate_kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        if not do_sample:
            generate_kwargs.setdefault("temperature", None)
            generate_kwargs.setdefault("top_p", None)
            generate_kwargs.setdefault("top_k", None)
        new = self.lang_model.generate(
            inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"],
            modality_ids=inp["modality_ids"], segment_ids=inp["segment_ids"],
            max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True, **generate_kwargs,
        )
        return torch.cat([input_ids, new.to(dev)], dim=1)

    # ------------------------------------------------------------------ io
    def canonical_state_dict(self) -> Dict[str, torch.Tensor]:
        """State dict under the checkpoint names (`vision_encoder.*` without SigLIP's nesting)."""
        return {_canonical(k): v for k, v in self.state_dict().items()}

    def load_canonical_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load tensors named as in `canonical_state_dict`; strict: names and shapes must match."""
        own_sd = self.state_dict()
        own = {_canonical(k): k for k in own_sd}
        unknown = [k for k in state_dict if k not in own]
        missing = [k for k in own if k not in state_dict]
        if strict and (unknown or missing):
            raise KeyError(f"checkpoint does not match the model: missing {missing[:8]}, unexpected {unknown[:8]}")
        wrong = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own_sd[own[k]].shape)}"
                 for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own_sd[own[k]].shape)]
        if wrong:
            raise ValueError(f"checkpoint shapes do not match the model ({len(wrong)} tensors): {wrong[:6]}")
        return self.load_state_dict({own[k]: v for k, v in state_dict.items() if k in own}, strict=strict, assign=assign)

    def save_pretrained(self, directory: str, processor=None) -> None:
        """Writes ``aki_config.json``, ``model.safetensors`` (and the processor's tokenizer)."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        self.config.save_pretrained(directory)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.canonical_state_dict().items()}
        save_file(sd, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt", "aki_config": json.dumps(self.config.to_dict())})
        if processor is not None:
            processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str, device=None, dtype: Optional[torch.dtype] = None, **config_overrides) -> "AKIModel":
        """Loads what `save_pretrained` wrote; ``config_overrides`` replace config fields (e.g.
        ``attention="causal"``)."""
        from safetensors.torch import load_file

        config = AKIConfig.from_pretrained(directory)
        if config_overrides:
            config = AKIConfig.from_dict({**config.to_dict(), **config_overrides})
        model = cls(config)
        model.load_canonical_state_dict(load_file(os.path.join(directory, WEIGHTS_NAME)))
        if dtype is not None:
            model.to(dtype)
        if device is not None:
            model.to(device)
        return model.eval()
