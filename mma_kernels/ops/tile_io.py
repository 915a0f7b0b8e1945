"""Tile arithmetic and loads shared by every MMA kernel: fp32 dots (with the interpreter's bf16
workaround), rounding casts, and row-tile loads with or without a row mask."""
import triton
import triton.language as tl

# The forward's plain (fully allowed) tile loop runs unrolled by two (`tl.range`'s
# loop_unroll_factor): on sm_90 the unrolled body costs fewer instructions per tile than one tile per
# iteration (benchmarks/results/static/unroll_sm90_compare.md; dQ's, tried, did not). Masked loops visit one or two tiles per row block
# and stay as they are.
PLAIN_UNROLL = tl.constexpr(2)

# The autotune key's arguments that the kernels never read (`triton_ops._KEY`): not specialised, so every bucket
# runs the same binary (the JIT would otherwise compile apart a bucket of 1, or one divisible by 16, such as 0).
KEY_ONLY_ARGS = ["LQ_BUCKET", "DOC_BUCKET"]


@triton.jit
def _mm(a, b, acc, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b (+ acc) in fp32. UPCAST (bf16 under the interpreter, whose bf16 dot is broken) feeds
    fp32 copies of the operands: bf16 products are exact in fp32, so the result is the same."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PREC)


@triton.jit
def _cast(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """x.to(dtype). Under UPCAST (bf16 in the interpreter, which truncates fp32 -> bf16) round to
    nearest even by hand, as the GPU's cvt.rn does, and keep the (exactly bf16) value in fp32."""
    if UPCAST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + ((bits >> 16) & 1) + 0x7FFF) >> 16) << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _load_rows(ptrs, offs_d, D, EVEN_D: tl.constexpr):
    """A [rows, BLOCK_D] tile whose rows are all in range: no mask at all when D == BLOCK_D."""
    if EVEN_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)


@triton.jit
def _load_some_rows(ptrs, offs_d, D, row_ok, EVEN_D: tl.constexpr):
    """A [rows, BLOCK_D] tile with the rows where `row_ok` is False loaded as 0."""
    if EVEN_D:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    else:
        return tl.load(ptrs, mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)


@triton.jit
def _row_tile(src, start, stride, offs_n, offs_d, D, row_ok, ROWS: tl.constexpr, EVEN_D: tl.constexpr,
              TMA: tl.constexpr):
    """Rows [start, start + len(offs_n)) of one head's [L, D] slice of K, V, Q or dO.

    TMA: `src` is a tensor descriptor over the slice (`tl.make_tensor_descriptor`, shape [L, D]): the copy
    engine reads rows past L and columns past D as 0 itself. Else `src` points at the slice's first row (row
    stride `stride`) and the load is masked as needed. ROWS: 0 every row is in range; 1 rows where `row_ok` is
    False are out of range (only bounds: the descriptor needs nothing); 2 rows where `row_ok` is False must read
    0 even inside the slice (padding whose values may be NaN or inf): pointer loads only (zeroing a descriptor
    tile would take it out of shared memory; callers take pointers there, see `triton_ops._tma_level`)."""
    if TMA:
        tl.static_assert(ROWS != 2, "_row_tile: rows that must read 0 inside the slice need pointer loads")
        return src.load([start, 0])
    else:
        ptrs = src + tl.cast(start, tl.int64) * stride + offs_n[:, None] * stride + offs_d[None, :]
        if ROWS == 0:
            return _load_rows(ptrs, offs_d, D, EVEN_D)
        else:
            return _load_some_rows(ptrs, offs_d, D, row_ok, EVEN_D)


@triton.jit
def _head_slice(base, L, D, stride, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr):
    """What `_row_tile` reads from: a tensor descriptor over the [L, D] slice at `base` (row stride `stride`,
    16-byte aligned: the launcher checks) when TMA, else `base` itself."""
    if TMA:
        return tl.make_tensor_descriptor(base, shape=[L, D], strides=[stride, 1], block_shape=[BLOCK_ROWS, BLOCK_D])
    else:
        return base


@triton.jit
def _tile_slices(a_base, b_base, L, D, sa, sb, BLOCK: tl.constexpr, SUB: tl.constexpr, BLOCK_D: tl.constexpr,
                 TMA: tl.constexpr):
    """`_head_slice` of two operands read in the same tiles (K and V; q and dO in dK/dV), row strides sa, sb: for
    tiles of BLOCK rows, and for the masked loops' narrower tiles of SUB rows (`triton_ops.MASKED_N`,
    `MASKED_M`; the same ones when SUB is 0 or not narrower): ad, bd, ads, bds."""
    ad = _head_slice(a_base, L, D, sa, BLOCK, BLOCK_D, TMA)
    bd = _head_slice(b_base, L, D, sb, BLOCK, BLOCK_D, TMA)
    if SUB > 0 and SUB < BLOCK:
        ads = _head_slice(a_base, L, D, sa, SUB, BLOCK_D, TMA)
        bds = _head_slice(b_base, L, D, sb, SUB, BLOCK_D, TMA)
    else:
        ads = ad
        bds = bd
    return ad, bd, ads, bds


@triton.jit
def _narrow_loops(kd, vd, kds, vds, look_hi, Lk, R: tl.constexpr, MN: tl.constexpr):
    """The masked loops' K/V sources, and the look-ahead loop's end, in tiles of MN keys (R of them per key tile,
    `triton_ops.MASKED_N`): the narrower descriptors, and the end cut off at the last key (the look-ahead hop
    reads MOD_NEXT at each tile's first key; diagonal tiles past Lk hold no allowed pair and run the
    padding-aware form)."""
    if R > 1:
        return kds, vds, tl.minimum(look_hi * R, tl.cdiv(Lk, MN))
    else:
        return kd, vd, look_hi
