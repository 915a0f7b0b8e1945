"""Tile arithmetic and loads shared by every MMA kernel: fp32 dots (with the interpreter's bf16
workaround), rounding casts, and row-tile loads with or without a row mask."""
import triton
import triton.language as tl


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
