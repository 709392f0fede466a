"""bfloat16 products with float32 accumulation: c = a @ w, inputs rounded to bfloat16.

The numbers (the same on every machine, whichever path computes them):
- Rounding: each float32 input becomes a bfloat16 (its top 16 bits) by
  round-to-nearest-even; a denormal input becomes a zero of its sign first
  (denormals are zero), NaN stays NaN (quiet), overflow gives infinity.
  `round_bf16` is that rule.
- Order: K is padded with zeros to an even K2; each element of c is one chain
  over the pairs q = 0, 1, ..., K2/2 - 1, in order, starting from zero (or
  from c): for each pair, first
      acc = acc + a[2q+1] * w[2q+1],   then   acc = acc + a[2q] * w[2q],
  each one float32 fused multiply-add (the product of two bfloat16 values is
  exact in float32) rounded to nearest even, with a denormal result flushed
  to a zero of its sign. That is Intel's pseudo-code of VDPBF16PS
  (AVX512-BF16: "FP32 FMA with DAZ in, FTZ out and RNE rounding, MXCSR
  neither consulted nor updated", the odd element of each pair first), so
  the compiled path is one vdpbf16ps per pair and 32 columns.
- `reference` computes exactly that with NumPy (each step in float64, where
  the product and the sum of a float32 and an exact 16-bit product are
  rounded once to float32, as the FMA does). It runs wherever the CPU lacks
  AVX512-BF16 (slower, the same bits), and the tests hold the compiled tiles
  to it bit for bit.

Packed layout: w (K, N) becomes bfloat16 panels (P, K2/2, NR, 2) of uint16,
P = ceil(N / NR), NR = 32 (two vectors of 16 float32): panel p, pair q holds
(w[2q, n], w[2q+1, n]) for its 32 columns n side by side, the dword a
vdpbf16ps lane reads; zero past N and past K. Rows of a are rounded into
(M, K2) uint16 (`round_rows`), and each tile broadcasts a row's pair (one
dword) against the panel's two vectors. The bits of an element of c depend
only on its row of a and column of w: not on M, the tile's row count, KC or
the thread (row-independent, as gemm.py's float32 tiles).
"""

from __future__ import annotations

import functools
import threading
import warnings

import numba
import numpy as np

from . import gemm

WIDTH = 16        # float32 lanes of a vector (AVX-512)
NR = 2 * WIDTH    # panel width: two vectors of accumulators per row
MR = 8            # rows of a tile: 16 accumulators of 32 registers
KCP = 256         # pairs of k per chunk: a panel's chunk (KCP x NR pairs, 32 KB) stays in L1
MC = 256          # rows per block
NEEDS = ("avx512f", "avx512bf16")
_LOCK = threading.Lock()


# ---------------------------------------------------------------- the numbers


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16): denormals to signed zero, then round to nearest even (see above)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    u = np.where((u & 0x7F800000) == 0, u & 0x80000000, u)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


def widen(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> the float32 values they stand for (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _flush(x: np.ndarray) -> np.ndarray:
    """Denormal float32 results to zeros of their sign (FTZ)."""
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), x), x).astype(np.float32)


def reference(a: np.ndarray, w: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """a (M, K) @ w (K, N) in float32 with bfloat16 inputs, in the order of the module docstring.

    c: a float32 (M, N) to accumulate onto (its denormals read as zero), else the chain starts at zero.
    """
    M, K = a.shape
    K_w, N = w.shape
    if K_w != K:
        raise ValueError(f"bf16.reference: shapes {a.shape} @ {w.shape} do not fit")
    a16 = widen(round_bf16(a)).astype(np.float64)
    w16 = widen(round_bf16(w)).astype(np.float64)
    if K % 2:
        a16 = np.concatenate([a16, np.zeros((M, 1))], axis=1)
        w16 = np.concatenate([w16, np.zeros((1, N))], axis=0)
    acc = np.zeros((M, N), np.float32) if c is None else _flush(np.asarray(c, np.float32))
    for q in range(a16.shape[1] // 2):
        for k in (2 * q + 1, 2 * q):
            acc = _flush((acc.astype(np.float64) + a16[:, k, None] * w16[None, k, :]).astype(np.float32))
    return acc


# ---------------------------------------------------------------- packing and rounding rows


def pack(w: np.ndarray) -> np.ndarray:
    """w (K, N) float32, any strides -> bfloat16 panels (P, K2/2, NR, 2) uint16 (see the module docstring)."""
    K, N = w.shape
    panels = np.zeros((-(-N // NR), (K + K % 2) // 2, NR, 2), np.uint16)
    _pack_into(np.asarray(w, np.float32), panels)
    return panels


@numba.njit(nogil=True, cache=True)
def _round1(x, cell, bits):
    """One float32's bfloat16 bits by round_bf16's rule (cell, bits: a float32 scratch and its uint32 view)."""
    cell[0] = x
    u = bits[0]
    if (u & 0x7F800000) == 0:
        u &= 0x80000000
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 0x40)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@numba.njit(nogil=True, cache=True)
def _pack_into(w, panels):
    """panels[n // NR, k // 2, n % NR, k % 2] = the bfloat16 of w[k, n], in one pass that reads w along
    its smaller stride (a transposed weight is read row by row of the original)."""
    K, N = w.shape
    cell = np.empty(1, np.float32)
    bits = cell.view(np.uint32)
    if w.strides[0] <= w.strides[1]:
        for n in range(N):
            for k in range(K):
                panels[n // NR, k // 2, n % NR, k % 2] = _round1(w[k, n], cell, bits)
    else:
        for k in range(K):
            for n in range(N):
                panels[n // NR, k // 2, n % NR, k % 2] = _round1(w[k, n], cell, bits)


@numba.njit(nogil=True, cache=True)
def round_rows(x, out):
    """out (M, K2) uint16 = round_bf16(x (M, K) float32, any strides), zero in a padding column: compiled,
    for the time loops and matmul."""
    M, K = x.shape
    cell = np.empty(1, np.float32)
    bits = cell.view(np.uint32)
    if x.strides[0] < x.strides[1]:  # a transposed operand: read along its columns
        for k in range(K):
            for i in range(M):
                out[i, k] = _round1(x[i, k], cell, bits)
    else:
        for i in range(M):
            for k in range(K):
                out[i, k] = _round1(x[i, k], cell, bits)
    for i in range(M):
        for k in range(K, out.shape[1]):
            out[i, k] = 0


# ---------------------------------------------------------------- the AVX512-BF16 tiles


def host_has() -> bool:
    """Whether this CPU executes the AVX512-BF16 tiles."""
    features = gemm._host()[1]
    return all(features.get(f) for f in NEEDS)


@functools.cache
def build() -> gemm.Microkernels:
    """Compile the AVX512-BF16 tiles; gemm.MicrokernelError says why they cannot be."""
    if not host_has():
        raise gemm.MicrokernelError(f"this CPU ({gemm._host()[0]}) has no AVX512-BF16")
    ll = gemm._llvm()
    try:
        module, machine = _compile()
        engine = ll.create_mcjit_compiler(module, machine)
        engine.finalize_object()
    except Exception as exc:  # an llvmlite or LLVM that rejects the IR
        raise gemm.MicrokernelError(f"LLVM could not compile the bf16 microkernel ({gemm._one_line(exc)})") from exc
    gemm._ENGINES.append(engine)
    return gemm.Microkernels(NR, MR, tuple(engine.get_function_address(f"tile{r}") for r in range(1, MR + 1)))


@functools.cache
def _tiles_or_none():
    """The tiles, or None: expected on a CPU without AVX512-BF16; on one with it, LLVM rejected them, which
    warns once (bf16 products then run the reference, with the same bits, slowly)."""
    if not host_has():
        return None
    try:
        return build()
    except gemm.MicrokernelError as exc:
        warnings.warn(f"the bf16 tiles are unavailable: {exc}; bf16 products run the NumPy reference (the same "
                      f"numbers, much slower)", RuntimeWarning, stacklevel=4)
        return None


def microkernels(force_reference: bool = False) -> gemm.Microkernels | None:
    """The compiled tiles, or None where this CPU lacks AVX512-BF16 (or LLVM rejects them): then `matmul`
    runs the reference. force_reference (or CHARRNN_BF16_REFERENCE=1) asks for None (tests)."""
    import os

    if force_reference or os.environ.get("CHARRNN_BF16_REFERENCE") == "1":
        return None
    with _LOCK:
        return _tiles_or_none()


def assembly() -> str:
    """The tiles' machine code as assembly text (the tests count their vdpbf16ps)."""
    module, machine = _compile()
    return machine.emit_assembly(module)


def _compile():
    ll = gemm._llvm()
    cpu, features = gemm._host()
    flat = ",".join(f"{'+' if on else '-'}{name}" for name, on in sorted(features.items()))
    module = ll.parse_assembly(_module_ir(cpu, flat))
    module.verify()
    machine = ll.Target.from_default_triple().create_target_machine(cpu=cpu, features=flat, opt=3)
    return module, machine


def _module_ir(cpu: str, features: str) -> str:
    vec, mask = f"<{WIDTH} x float>", f"<{WIDTH} x i1>"
    lines = [
        f"declare {vec} @llvm.x86.avx512bf16.dpbf16ps.512({vec}, <32 x bfloat>, <32 x bfloat>)",
        f"declare void @llvm.masked.store.v{WIDTH}f32.p0({vec}, ptr, i32 immarg, {mask})",
        f"declare {vec} @llvm.masked.load.v{WIDTH}f32.p0(ptr, i32 immarg, {mask}, {vec})",
    ]
    lines += [_tile_ir(rows) for rows in range(1, MR + 1)]
    lines.append(f'attributes #0 = {{ nounwind "min-legal-vector-width"="512" "prefer-vector-width"="512" '
                 f'"target-cpu"="{cpu}" "target-features"="{features}" }}')
    return "\n".join(lines)


def _tile_ir(rows: int) -> str:
    """tile{rows}(a, lda, w, Q, c, ldc, mask0, mask1, accumulate): c[0:rows, 0:NR] (+)= a @ w over Q pairs.

    a: rounded rows (uint16, lda elements apart); w: one panel's chunk (Q, NR, 2) uint16, contiguous;
    c: float32, ldc elements apart; the masks say which columns of the two vectors lie inside c.
    """
    vec, width = f"<{WIDTH} x float>", WIDTH
    out = gemm.tile_entry(rows, width, "q")
    out += [f"  %wo0 = mul i64 %q, {2 * NR}", f"  %wo1 = add i64 %wo0, {2 * width}"]
    for v in range(2):
        out += [f"  %wp{v} = getelementptr i16, ptr %w, i64 %wo{v}",
                f"  %w{v} = load <32 x bfloat>, ptr %wp{v}, align 2"]
    out.append("  %k2 = shl i64 %q, 1")
    for r in range(rows):
        out += [f"  %ao{r} = add i64 %ro{r}, %k2", f"  %ap{r} = getelementptr i16, ptr %a, i64 %ao{r}",
                f"  %as{r} = load i32, ptr %ap{r}, align 2",
                f"  %ai{r} = insertelement <{width} x i32> poison, i32 %as{r}, i32 0",
                f"  %ab{r} = shufflevector <{width} x i32> %ai{r}, <{width} x i32> poison, "
                f"<{width} x i32> zeroinitializer",
                f"  %af{r} = bitcast <{width} x i32> %ab{r} to <32 x bfloat>"]
        for v in range(2):
            out.append(f"  %n{r}_{v} = call {vec} @llvm.x86.avx512bf16.dpbf16ps.512({vec} %s{r}_{v}, "
                       f"<32 x bfloat> %af{r}, <32 x bfloat> %w{v})")
    return "\n".join(out + gemm.tile_exit(rows, width, "q"))


@numba.njit(nogil=True, cache=True)
def compiled_matmul(a16, packed, c, tiles):
    """c = a @ w from rounded rows a16 (M, K2) uint16 and packed w (P, K2/2, NR, 2): chunks of KCP pairs,
    blocks of MC rows, panels, tiles of MR rows (the order of gemm.compiled_matmul)."""
    M, K2 = a16.shape
    Q = K2 // 2
    N = c.shape[1]
    P = packed.shape[0]
    a_ptr, w_ptr, c_ptr = a16.ctypes.data, packed.ctypes.data, c.ctypes.data
    for q0 in range(0, Q, KCP):
        qc = min(KCP, Q - q0)
        accumulate = 1 if q0 > 0 else 0
        for i0 in range(0, M, MC):
            i1 = min(i0 + MC, M)
            for p in range(P):
                cols = min(NR, N - p * NR)
                mask0 = (1 << min(cols, WIDTH)) - 1
                mask1 = (1 << max(cols - WIDTH, 0)) - 1
                w_p = w_ptr + 4 * (p * Q + q0) * NR
                for i in range(i0, i1, MR):
                    gemm._call_tile(tiles[min(MR, i1 - i) - 1], a_ptr + 2 * (i * K2 + 2 * q0), K2, w_p, qc,
                                    c_ptr + 4 * (i * N + p * NR), N, mask0, mask1, accumulate)


def matmul(a: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, *, packed: np.ndarray | None = None,
           tiles: gemm.Microkernels | None | bool = True) -> np.ndarray:
    """a (M, K) @ w (K, N) with bfloat16 inputs and float32 accumulation: the tiles where the CPU has them,
    else the reference, the same bits. packed: pack(w), when the caller keeps it; tiles: the compiled
    tiles to use, None for the reference, True (default) for microkernels()."""
    a = np.asarray(a, np.float32)  # any strides: round_rows reads a transposed operand as it lies
    M, K = a.shape
    N = w.shape[1]
    if tiles is True:
        tiles = microkernels()
    if tiles is None:
        result = reference(a, w)
        if out is None:
            return result
        out[...] = result
        return out
    packed = pack(w) if packed is None else packed
    out = np.empty((M, N), np.float32) if out is None else out
    if M == 0 or N == 0:
        return out
    if K == 0:
        out[...] = 0
        return out
    a16 = np.empty((M, K + K % 2), np.uint16)
    round_rows(a, a16)
    compiled_matmul(a16, packed, out, tiles.tiles)
    return out
