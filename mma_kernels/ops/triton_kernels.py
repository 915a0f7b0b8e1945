"""Triton kernels of MMA attention: forward, dQ, and dK/dV (FlashAttention-2 style), one module per concern.

The mask is computed inside each tile from the per-token fields of `MMAMask.meta` (see `mma_kernels/mask.py`).
Every program first reduces its rows' (or keys') ranges to a block range to visit and a sub-range of fully
allowed tiles; the loop is split in three: masked tiles, tiles with no mask arithmetic, masked tiles; fwd and
dQ add a fourth, the look-ahead tiles past the gap of `_lookahead_split`.

- `tile_io`: dots, casts, tile loads;
- `mask_rules`: the contract's rule per tile kind, and the per-token fields it reads;
- `block_ranges`: which tiles each program visits;
- `fwd_kernel`, `dq_kernel`, `dkdv_kernel`: the kernels.

HAS_GROUPS / HAS_WINDOW / HAS_QPOS are constexpr: without them the kernels compile exactly to the plain MMA
code. This module gathers the names the launchers, tests and benchmarks use.
"""
from .block_ranges import (_diagonal_kind, _key_block_ranges, _lookahead_split, _next_look_block,  # noqa: F401
                           _query_block, _query_block_ranges)
from .dkdv_kernel import _dkdv_tiles, _dkdv_tiles_at, mma_bwd_dkdv_kernel  # noqa: F401
from .dq_kernel import _dq_pass, _dq_tile, _dq_tiles, mma_bwd_dq_kernel  # noqa: F401
from .fwd_kernel import _fwd_look_tiles, _fwd_row_block, _fwd_tile, _fwd_tiles, mma_fwd_kernel  # noqa: F401
from .mask_rules import (_allowed, _allowed_before, _allowed_causal, _allowed_key_span, _allowed_look,  # noqa: F401
                         _allowed_span,
                         _bit_or, _load_key_fields, _load_query_fields, _look_bits, _span_key_fields,
                         _span_query_bounds, _tile_allowed, _tile_key_fields)
from .tile_io import _cast, _load_rows, _load_some_rows, _mm  # noqa: F401
