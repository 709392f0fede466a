"""The recurrence's step product, c = a @ w, with w packed once: a float32 GEMM for few rows.

Each time step multiplies a small block of rows (h, B x H) by the same weight
(W_hh.T, H x G*H). OpenBLAS copies ("packs") the weight into its panel layout
on every call: a fifth of a whole training step went to those copies. Here the
weight is packed once per chunk (`pack`), and each call runs straight over the
panels (`matmul`).

Packed layout: w (K, N) becomes panels (P, K, NR), P = ceil(N / NR); panel p
holds columns [p*NR, (p+1)*NR), row k contiguous, zero-padded past N. NR is
two vector registers of float32.

The microkernel multiplies `rows` (at most MR) rows of a by one panel and
keeps the rows x NR block of c in 2 * MR vector registers for the whole sum
over k. It is written in LLVM IR and compiled by llvmlite (numba's own
compiler) because numba's loop vectorizer keeps such accumulators in memory,
and because on AVX-512 machines LLVM otherwise prefers 256-bit vectors. One
function per row count (1..MR) handles a block whose row count is not a
multiple of MR; masked stores handle a panel that runs past N.

Numerics: each element of c is one fused multiply-add chain over k = 0, 1, ...
in order (K is taken in chunks of KC, each continuing the chain), whatever
the vector width, MR or the thread: the result's bits depend only on a and w.

Shapes: a (M, K) C-contiguous; packed (P, K, NR); c (M, N) C-contiguous.

Variants: AVX-512 (NR 32, MR 8) and AVX2 + FMA (NR 16, MR 6). The callers run
the widest this CPU executes (`microkernels()`); `build(isa)` compiles a given
one, so that the tests run every variant the host executes (an AVX-512 CPU
runs the AVX2 tiles as an AVX2-only CPU would). Both give the same bits (the
numerics above). `available()` is False on machines without AVX2 and FMA, and
where LLVM cannot compile the code: the latter warns once and
`unavailable_reason()` says why (CI sets CHARRNN_REQUIRE_KERNELS, and the
tests fail on it). The callers use NumPy's matmul there.
"""

from __future__ import annotations

import functools
import threading
import warnings
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

KC = 256  # k-chunk: one panel chunk (KC x NR floats, 32 KB on AVX-512) stays in the L1 cache
MC = 256  # row block: its rows of a (MC x KC floats, 256 KB) stay in the L2 cache
# The microkernel's variants, widest first: (floats a vector, MR, the CPU features it needs).
# AVX-512: MR 8 (16 accumulators of 32 registers). AVX2 + FMA: MR 6 (12 accumulators of 16 registers).
VARIANTS = {"avx512": (16, 8, ("avx512f",)), "avx2": (8, 6, ("avx2", "fma"))}
# What an AVX-512 CPU must leave out to build the AVX2 variant exactly as an AVX2-only CPU would
_WIDER_THAN_AVX2 = ("avx512", "avx10", "evex512", "amx")
_ENGINES = []  # the llvmlite engines that own the compiled microkernels
_LOCK = threading.Lock()


class Microkernels(NamedTuple):
    """One variant's compiled tiles: panel width NR (two vectors), MR, and the addresses of tile1..tileMR."""

    nr: int
    mr: int
    tiles: tuple


class MicrokernelError(RuntimeError):
    """A variant cannot be built here: this CPU lacks its features, or LLVM rejects its code."""


def host_variants() -> tuple:
    """The variants this CPU executes, widest first (an AVX-512 CPU executes the AVX2 tiles too)."""
    features = _host()[1]
    return tuple(isa for isa, (_, _, needs) in VARIANTS.items() if all(features.get(f) for f in needs))


@functools.cache
def build(isa: str) -> Microkernels:
    """Compile one variant's tiles for this CPU; MicrokernelError says why it cannot be."""
    width, mr, _ = VARIANTS[isa]
    if isa not in host_variants():
        raise MicrokernelError(f"this CPU ({_host()[0]}) cannot execute the {isa} microkernel")
    ll = _llvm()
    try:
        module, machine = _compile(isa)
        engine = ll.create_mcjit_compiler(module, machine)
        engine.finalize_object()
    except Exception as exc:  # the finding itself: an llvmlite or LLVM that rejects the IR
        raise MicrokernelError(f"LLVM could not compile the {isa} microkernel ({_one_line(exc)})") from exc
    _ENGINES.append(engine)  # the compiled code lives as long as its engine, so keep it
    return Microkernels(2 * width, mr, tuple(engine.get_function_address(f"tile{r}") for r in range(1, mr + 1)))


def microkernels() -> Microkernels | None:
    """The widest variant this CPU executes, or None: then the callers use NumPy's matmul.

    A CPU without AVX2 and FMA is expected to have none. A variant that fails to
    compile is not: it warns once, and unavailable_reason() says why (the tests
    fail on it where CHARRNN_REQUIRE_KERNELS is set).
    """
    return _host_microkernels()[0]


def unavailable_reason() -> str | None:
    """Why microkernels() is None on this machine, or None where it has a microkernel."""
    return _host_microkernels()[1]


def _host_microkernels() -> tuple:
    """(the widest variant this CPU executes, None) or (None, why there is none), built once: a training
    step's row blocks ask on several threads at once, and must not build it (and warn) twice."""
    with _LOCK:
        return _build_host()


@functools.cache
def _build_host() -> tuple:
    try:
        variants = host_variants()
        if not variants:
            return None, f"this CPU ({_host()[0]}) has neither AVX-512 nor AVX2 with FMA"
        return build(variants[0]), None
    except Exception as exc:  # MicrokernelError, or an llvmlite that cannot read this CPU
        reason = str(exc) if isinstance(exc, MicrokernelError) else f"llvmlite failed ({_one_line(exc)})"
    warnings.warn(f"the packed step product is unavailable: {reason}; float32 steps use NumPy's matmul, "
                  f"which is slower", RuntimeWarning, stacklevel=4)
    return None, reason


def assembly(isa: str) -> str:
    """The machine code of a variant's tiles as assembly text (the tests read which registers it uses)."""
    module, machine = _compile(isa)
    return machine.emit_assembly(module)


def _one_line(exc: Exception) -> str:
    """An exception as one line (LLVM's messages quote the offending code over several), for a warning."""
    said = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {said}"


def _llvm():
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    return ll


@functools.cache
def _host() -> tuple:
    """(this CPU's name, its features as LLVM names them)."""
    ll = _llvm()
    return ll.get_host_cpu_name(), ll.get_host_cpu_features()


def _compile(isa: str):
    """(the parsed and verified module of a variant's tiles, the target machine for it) for this CPU.

    The AVX2 variant turns off every feature wider than AVX2, so that an AVX-512 CPU compiles it to
    the instructions an AVX2-only CPU runs (VEX-coded, masked stores by vmaskmovps).
    """
    ll = _llvm()
    width, mr, _ = VARIANTS[isa]
    cpu, features = _host()
    if isa == "avx2":
        features = features.copy()
        features.update({name: False for name in features if name.startswith(_WIDER_THAN_AVX2)})
    flat = ",".join(f"{'+' if on else '-'}{name}" for name, on in sorted(features.items()))
    module = ll.parse_assembly(_module_ir(width, mr, cpu, flat))
    module.verify()
    machine = ll.Target.from_default_triple().create_target_machine(cpu=cpu, features=flat, opt=3)
    return module, machine


def _module_ir(width: int, mr: int, cpu: str, features: str) -> str:
    """LLVM IR of the microkernels tile1..tile{mr} (see _tile_ir) for vectors of `width` floats."""
    vec = f"<{width} x float>"
    mask = f"<{width} x i1>"
    lines = [
        f"declare {vec} @llvm.fma.v{width}f32({vec}, {vec}, {vec})",
        f"declare void @llvm.masked.store.v{width}f32.p0({vec}, ptr, i32 immarg, {mask})",
        f"declare {vec} @llvm.masked.load.v{width}f32.p0(ptr, i32 immarg, {mask}, {vec})",
    ]
    lines += [_tile_ir(rows, width) for rows in range(1, mr + 1)]
    bits = 32 * width
    lines.append(f'attributes #0 = {{ nounwind "min-legal-vector-width"="{bits}" "prefer-vector-width"="{bits}" '
                 f'"target-cpu"="{cpu}" "target-features"="{features}" }}')
    return "\n".join(lines)


def _tile_ir(rows: int, width: int) -> str:
    """One microkernel: c[0:rows, 0:NR] (+)= a[0:rows, 0:K] @ w[0:K, 0:NR], NR = 2 * width.

    tile{rows}(a, lda, w, K, c, ldc, mask0, mask1, accumulate): pointers to float32,
    leading dimensions in elements; w is one panel (K, NR), contiguous; mask0/1 say
    which of the two vectors' columns lie inside c; accumulate != 0 adds to c.
    The two halves of panel row k are loaded once and multiplied by each row's
    a[r, k], broadcast; the 2 * rows accumulators stay in registers over k.
    """
    vec, nr = f"<{width} x float>", 2 * width
    out = tile_entry(rows, width, "k")
    out += [f"  %wo0 = mul i64 %k, {nr}", f"  %wo1 = add i64 %wo0, {width}"]
    for v in range(2):
        out += [f"  %wp{v} = getelementptr float, ptr %w, i64 %wo{v}", f"  %w{v} = load {vec}, ptr %wp{v}, align 4"]
    for r in range(rows):
        out += [f"  %ao{r} = add i64 %ro{r}, %k", f"  %ap{r} = getelementptr float, ptr %a, i64 %ao{r}",
                f"  %as{r} = load float, ptr %ap{r}, align 4",
                f"  %ai{r} = insertelement {vec} poison, float %as{r}, i32 0",
                f"  %ab{r} = shufflevector {vec} %ai{r}, {vec} poison, <{width} x i32> zeroinitializer"]
        for v in range(2):
            out.append(f"  %n{r}_{v} = call {vec} @llvm.fma.v{width}f32({vec} %ab{r}, {vec} %w{v}, {vec} %s{r}_{v})")
    return "\n".join(out + tile_exit(rows, width, "k"))


def tile_entry(rows: int, width: int, k: str) -> list:
    """The IR lines a tile{rows} function starts with, up to its loop's body: its signature (a, lda, w, the
    loop's count (k upper-cased), c, ldc, mask0, mask1, accumulate), the column masks, the 2 * rows
    accumulators (%s{r}_{v}, from zero or from c itself), each row's offset (%ro{r}) and the loop variable %{k}.
    The body computes %n{r}_{v} from %s{r}_{v}; tile_exit closes the loop and stores them. bf16.py's tiles
    share this frame."""
    vec, count = f"<{width} x float>", k.upper()
    acc = [(r, v) for r in range(rows) for v in range(2)]
    out = [f"define void @tile{rows}(ptr %a, i64 %lda, ptr %w, i64 %{count}, ptr %c, i64 %ldc, "
           f"i32 %m0, i32 %m1, i32 %accumulate) #0 {{", "entry:"]
    for v in range(2):
        out += [f"  %mt{v} = trunc i32 %m{v} to i{width}", f"  %mask{v} = bitcast i{width} %mt{v} to <{width} x i1>"]
    out.append("  %add = icmp ne i32 %accumulate, 0")
    for r, v in acc:  # start from zero, or from c itself
        out += [f"  %co{r}_{v} = mul i64 %ldc, {r}", f"  %cq{r}_{v} = add i64 %co{r}_{v}, {v * width}",
                f"  %cp{r}_{v} = getelementptr float, ptr %c, i64 %cq{r}_{v}",
                f"  %old{r}_{v} = call {vec} @llvm.masked.load.v{width}f32.p0(ptr %cp{r}_{v}, i32 4, "
                f"<{width} x i1> %mask{v}, {vec} zeroinitializer)",
                f"  %init{r}_{v} = select i1 %add, {vec} %old{r}_{v}, {vec} zeroinitializer"]
    for r in range(rows):
        out.append(f"  %ro{r} = mul i64 %lda, {r}")
    out += ["  br label %loop", "loop:", f"  %{k} = phi i64 [0, %entry], [%{k}1, %loop]"]
    for r, v in acc:
        out.append(f"  %s{r}_{v} = phi {vec} [%init{r}_{v}, %entry], [%n{r}_{v}, %loop]")
    return out


def tile_exit(rows: int, width: int, k: str) -> list:
    """The IR lines that end a tile{rows} function tile_entry began: the loop's next turn or its end, and the
    accumulators stored through the column masks."""
    vec = f"<{width} x float>"
    out = [f"  %{k}1 = add i64 %{k}, 1", f"  %more = icmp ult i64 %{k}1, %{k.upper()}",
           "  br i1 %more, label %loop, label %done", "done:"]
    for r in range(rows):
        for v in range(2):
            out.append(f"  call void @llvm.masked.store.v{width}f32.p0({vec} %n{r}_{v}, ptr %cp{r}_{v}, i32 4, "
                       f"<{width} x i1> %mask{v})")
    return out + ["  ret void", "}"]


def available() -> bool:
    """Whether this machine runs the packed product (else callers use np.matmul)."""
    return microkernels() is not None


def pack(w: np.ndarray, nr: int | None = None) -> np.ndarray:
    """w (K, N) float32 -> panels (P, K, NR), zero-padded past column N (see the module docstring).

    nr: the panel width of the variant that will read the panels (default: this CPU's widest).
    """
    nr = nr or microkernels().nr
    K, N = w.shape
    P = -(-N // nr)
    panels = np.zeros((P, K, nr), np.float32)
    full = N // nr
    panels[:full] = w[:, : full * nr].reshape(K, full, nr).transpose(1, 0, 2)
    if full < P:
        panels[full, :, : N - full * nr] = w[:, full * nr :]
    return panels


def matmul(a: np.ndarray, packed: np.ndarray, c: np.ndarray, variant: Microkernels | None = None) -> None:
    """c = a @ w, where packed = pack(w, variant.nr): a (M, K) and c (M, N) C-contiguous float32.

    variant: the tiles to run (build(isa)); default this CPU's widest (microkernels()).
    The shapes are checked here, as the tiles read and write through raw pointers.
    """
    if not all(x.dtype == np.float32 and x.flags.c_contiguous for x in (a, packed, c)):
        raise ValueError("gemm.matmul needs C-contiguous float32 arrays")
    nr, mr, tiles = variant or microkernels()
    (M, K), (P, K_w, nr_w), (M_c, N) = a.shape, packed.shape, c.shape
    if K_w != K or nr_w != nr or M_c != M or P != -(-N // nr):
        raise ValueError(f"gemm.matmul: shapes {a.shape} @ packed {packed.shape} -> {c.shape} do not fit "
                         f"panels {nr} wide")
    compiled_matmul(a, packed, c, nr, mr, tiles)


@intrinsic
def _call_tile(typingctx, address, a, lda, w, K, c, ldc, mask0, mask1, accumulate):
    """Call the microkernel at `address` (an integer), pointers given as integers."""
    sig = types.void(address, a, lda, w, K, c, ldc, mask0, mask1, accumulate)

    def codegen(context, builder, signature, args):
        i64, i32, ptr = ir.IntType(64), ir.IntType(32), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ptr, i64, ptr, i64, ptr, i64, i32, i32, i32])
        address, a, lda, w, K, c, ldc, mask0, mask1, accumulate = args
        fn = builder.inttoptr(address, fnty.as_pointer())
        builder.call(fn, [builder.inttoptr(a, ptr), lda, builder.inttoptr(w, ptr), K, builder.inttoptr(c, ptr),
                          ldc, builder.trunc(mask0, i32), builder.trunc(mask1, i32), builder.trunc(accumulate, i32)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def compiled_matmul(a, packed, c, nr, mr, tiles):
    """c = a @ w by chunks of KC of k, blocks of MC rows, panels of nr columns, tiles of mr rows.

    The order keeps a panel's chunk (KC x nr) in L1 while every tile of a block
    of rows passes over it, and the block's rows of a (MC x KC) in L2.
    """
    M, K = a.shape
    N = c.shape[1]
    P = packed.shape[0]
    half = nr // 2
    a_ptr, w_ptr, c_ptr = a.ctypes.data, packed.ctypes.data, c.ctypes.data
    for k0 in range(0, K, KC):
        kc = min(KC, K - k0)
        accumulate = 1 if k0 > 0 else 0
        for i0 in range(0, M, MC):
            i1 = min(i0 + MC, M)
            for p in range(P):
                cols = min(nr, N - p * nr)
                mask0 = (1 << min(cols, half)) - 1
                mask1 = (1 << max(cols - half, 0)) - 1
                w_p = w_ptr + 4 * (p * K + k0) * nr
                for i in range(i0, i1, mr):
                    _call_tile(tiles[min(mr, i1 - i) - 1], a_ptr + 4 * (i * K + k0), K, w_p, kc,
                               c_ptr + 4 * (i * N + p * nr), N, mask0, mask1, accumulate)
