"""Integrations: transformers glue (`register`, `apply_mma`), id helpers, packing collator.

Importing this package does not import transformers; the transformers pieces load on first use.
"""
from .ids import build_mma_mask, fit_mma_ids, mma_ids_from_input_ids

__all__ = ["build_mma_mask", "fit_mma_ids", "mma_ids_from_input_ids", "register", "apply_mma",
           "MMADataCollatorWithFlattening"]


def register() -> None:
    """Register ``attn_implementation="mma"`` with transformers (needs transformers installed)."""
    from .transformers import register as _register

    _register()


def apply_mma(model, image_token_id=None, answer_token_id=None, policy="mma", **kwargs):
    from .transformers import apply_mma as _apply

    return _apply(model, image_token_id=image_token_id, answer_token_id=answer_token_id, policy=policy, **kwargs)


apply_mma.__doc__ = "Switch a loaded transformers decoder to MMA in place (see `integrations.transformers.apply_mma`)."


def __getattr__(name):
    if name == "MMADataCollatorWithFlattening":
        from .collator import MMADataCollatorWithFlattening

        return MMADataCollatorWithFlattening
    raise AttributeError(name)
