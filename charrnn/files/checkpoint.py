"""Checkpoint files: safetensors with charrnn's JSON metadata, written atomically, read defensively.

A file is standard safetensors, written and parsed by the safetensors library
(loadable by `safetensors.numpy.load_file` and, for models, by
`torch.nn.Module.load_state_dict` after conversion), with

    __metadata__ = {"charrnn": json.dumps({"format_version": 1, "charrnn_version": "...",
                                           "kind": "model" | "state", ...})}

What is ours on top of the library: the atomic multi-file save (atomic.py),
that metadata schema and its checks, the dtypes we accept (floats and integers,
no BF16/FP8/bool/complex), finite floats only, and the exact names, shapes and
dtypes a model config calls for. Every failure is a CheckpointError with one
line; nothing here ever unpickles.

What the library checks, measured with safetensors 0.8 (tests/test_checkpoint.py
holds each case): the 8-byte header length (over 100 MB is refused before
anything is allocated; longer than the file, likewise), UTF-8 and JSON with no
duplicate "__metadata__", string-only metadata values, non-negative integer
shapes and offsets, products that would overflow, and that the tensors tile the
data section exactly (no gap, overlap or trailing bytes). So nothing is
pre-checked by hand here. Two things it lets through, both harmless here: a
tensor entry's unknown fields are ignored, and a name repeated in the header
keeps its last entry (the dropped entry's bytes then cover no tensor, which the
tiling check refuses unless that entry was empty).

Memory: a model file's tensor names, dtypes and shapes are checked from the header (the library's
parse of it: `get_slice` reads no data) before any tensor is read, so a header that declares a tensor
of gigabytes in a sparse file is refused without allocating it (a state file: a tensor larger than any
of its run). Files are read with the library's "pread" backend, not mmap, so a load
holds each tensor once (the arrays it returns, writable) and a file truncated
under a reader is an error, not a SIGBUS; a header is read only once its length
fits the file and the 100 MB limit. Writing builds one file's bytes
(`safetensors.numpy.save`) just before writing them: a save of several files
holds about two copies of one file at a time, the library's buffer and its
bytes (measured: peak RSS grew 107 MB saving three 50 MB files).
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import safetensors
import safetensors.numpy

from .. import __version__
from . import atomic
from ..errors import CheckpointError, ConfigError
from .layout import STATE_FILE, run_model_file  # what load_state and load_model read when given a run directory
from ..core.model import ModelConfig, param_shapes

FORMAT_VERSION = 1
RESERVED_META = ("format_version", "charrnn_version", "kind")

# The safetensors dtypes charrnn writes and reads, as little-endian NumPy dtypes.
_DTYPES = {
    "F16": "<f2", "F32": "<f4", "F64": "<f8",
    "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
    "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8",
}
_DTYPES = {tag: np.dtype(name) for tag, name in _DTYPES.items()}
_SAVABLE = {(dt.kind, dt.itemsize): dt for dt in _DTYPES.values()}


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _os_reason(exc: OSError) -> str:
    return exc.strerror or _one_line(exc) or type(exc).__name__


# ---------------------------------------------------------------- writing


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # the header is UTF-8 JSON: a lone surrogate cannot go in
    except UnicodeEncodeError:
        return False
    return True


def _checked(tensors: dict, meta: dict) -> tuple[dict, dict]:
    """One file's contents, checked (names, dtypes, finite, JSON): (arrays, __metadata__) for the library."""
    if not isinstance(tensors, dict):
        raise CheckpointError("tensors to save must be a dict name -> array")
    if not isinstance(meta, dict):
        raise CheckpointError("checkpoint metadata must be a dict")
    arrays = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__" or not _is_utf8(name):
            raise CheckpointError(f"cannot save tensor named {name!r}")
        if not isinstance(arr, np.ndarray):
            raise CheckpointError(f"cannot save {name}: not a NumPy array ({type(arr).__name__})")
        dtype = _SAVABLE.get((arr.dtype.kind, arr.dtype.itemsize))
        if dtype is None:
            raise CheckpointError(f"cannot save {name}: unsupported dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CheckpointError(f"refusing to save {name}: it holds NaN or infinite values")
        # The library copies raw memory: the array must be C-contiguous and little-endian.
        # (asarray, not ascontiguousarray: the latter turns 0-d arrays into 1-d ones.)
        arrays[name] = np.asarray(arr, dtype=dtype, order="C")
    full = {k: v for k, v in meta.items() if k not in ("format_version", "charrnn_version")}
    full["format_version"] = FORMAT_VERSION
    full["charrnn_version"] = __version__
    try:
        # ASCII-only and strict JSON (no NaN), so any safetensors reader accepts it.
        meta_json = json.dumps(full, ensure_ascii=True, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serializable: {_one_line(exc)}") from None
    return arrays, {"charrnn": meta_json}


def _write_all(out, data: bytes) -> None:
    """Write one checkpoint's bytes to the temp file out (a seam the reliability tests slow down or fail)."""
    out.write(data)


def _writer(arrays: dict, metadata: dict):
    """The write function atomic.write_files calls: encodes the file only then, so one file's bytes are in memory."""
    return lambda out: _write_all(out, safetensors.numpy.save(arrays, metadata=metadata))


def save_tensors(path, tensors: dict, meta: dict) -> None:
    """Write a safetensors file atomically.

    - path: destination file (str or PathLike); its directory must exist
    - tensors: dict name -> ndarray (float16/32/64 or integer); floats must be finite
    - meta: JSON-serializable dict; "format_version" and "charrnn_version" are added
    Raises CheckpointError (nothing written) for bad input, and CheckpointError
    (previous file untouched, temp file removed) when the OS refuses the write.
    """
    save_files([(path, tensors, meta)])


def save_files(files: list) -> None:
    """Write several safetensors files so that a failed write changes none of them.

    - files: list of (path, tensors, meta) as save_tensors takes them
    Every file is checked first, then encoded and written by atomic.write_files:
    a failure (such as a full disk) leaves every target as it was; a crash
    between two renames leaves the earlier targets new and the later ones old,
    each of them whole.
    """
    checked = [(os.fspath(path), _writer(*_checked(tensors, meta))) for path, tensors, meta in files]
    try:
        atomic.write_files(checked)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {exc.filename}: {_os_reason(exc)}") from None
    except safetensors.SafetensorError as exc:  # not expected: _checked refuses what the library would
        raise CheckpointError(f"cannot encode checkpoint: {_one_line(exc)}") from None


# ---------------------------------------------------------------- reading


def _reject_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _parse_meta(outer) -> dict:
    """Our metadata from the library's __metadata__ (dict str -> str, or None); ValueError if bad."""
    if not isinstance(outer, dict) or not isinstance(outer.get("charrnn"), str):
        raise ValueError("no charrnn metadata (not a charrnn checkpoint)")
    try:
        meta = json.loads(outer["charrnn"], object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"charrnn metadata is not valid JSON ({_one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise ValueError("charrnn metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"missing or invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"written by a newer charrnn (format {version}); upgrade charrnn")
    return meta


def _load(path: str, max_bytes: int, check=None) -> tuple[dict, dict]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(_os_reason(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError("is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader
        raise ValueError("is not a regular file")
    if st.st_size == 0:
        raise ValueError("file is empty")
    if st.st_size > max_bytes:
        raise ValueError(f"file is larger than the {max_bytes}-byte limit ({st.st_size} bytes)")
    try:
        with safetensors.safe_open(path, framework="numpy", backend="pread") as f:
            meta = _parse_meta(f.metadata())  # before reading any tensor data
            layout = {}  # name -> (dtype, shape), from the header alone
            for name in f.offset_keys():
                view = f.get_slice(name)
                tag = view.get_dtype()
                if tag not in _DTYPES:
                    raise ValueError(f"tensor {name!r}: unsupported dtype {tag}")
                layout[name] = (_DTYPES[tag], tuple(view.get_shape()))
            if check is not None:
                # names, dtypes and shapes are refused here, before a byte of tensor data is read:
                # a header may declare a tensor of gigabytes that a sparse file holds in a few KB
                check(meta, layout)
            tensors = {}
            for name in layout:
                arr = f.get_tensor(name)
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise ValueError(f"tensor {name!r} holds NaN or infinite values")
                tensors[name] = arr
    except safetensors.SafetensorError as exc:
        reason = str(exc).removeprefix("Error while deserializing header: ")
        raise ValueError(f"not a valid safetensors file: {_one_line(reason)}") from None
    return tensors, meta


def load_tensors(path, max_bytes: int = 2**34, check=None) -> tuple[dict, dict]:
    """Read and validate a checkpoint file.

    - path: the file (str or PathLike)
    - max_bytes: refuse files larger than this
    - check: called as check(meta, layout) with the metadata and each tensor's (dtype, shape) from the
      header (layout: name -> (np.dtype, tuple)) before any tensor data is read; it raises to refuse the file
    Output: (tensors: dict name -> writable ndarray, meta: the charrnn metadata dict,
    "format_version" and "charrnn_version" included). Every failure is a CheckpointError.
    """
    try:
        path = os.fspath(path)
        return _load(path, max_bytes, check)
    except CheckpointError:
        raise
    except MemoryError:
        raise CheckpointError(f"cannot read checkpoint {path}: not enough memory") from None
    except Exception as exc:  # noqa: BLE001 - any decoding surprise is a bad checkpoint
        reason = _one_line(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {_one_line(exc)}"
        raise CheckpointError(f"bad checkpoint {path}: {reason}") from None


# ---------------------------------------------------------------- models and training state


def _resolve(path, filename: str) -> str:
    path = os.fspath(path)
    return os.path.join(path, filename) if os.path.isdir(path) else path


def _check_kind(meta: dict, kind: str, path: str) -> None:
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} is not a charrnn {kind} file (kind {meta.get('kind')!r})")


def check_params(params: dict, config: ModelConfig, where: str) -> None:
    """CheckpointError, its message starting with `where` and naming what differs, unless params are
    exactly param_shapes(config) in config.dtype."""
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: parameters must be a dict")
    _check_layout({name: (arr.dtype, arr.shape) if isinstance(arr, np.ndarray) else (None, type(arr).__name__)
                   for name, arr in params.items()}, config, where)


def _check_layout(layout: dict, config: ModelConfig, where: str) -> None:
    """check_params on the tensors' (dtype, shape) by name (a shape that is not a tuple: not an array)."""
    shapes = param_shapes(config)
    missing = [k for k in shapes if k not in layout]
    extra = sorted(k for k in layout if k not in shapes)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing tensors " + ", ".join(missing))
        if extra:
            parts.append("unexpected tensors " + ", ".join(extra))
        raise CheckpointError(f"{where}: {'; '.join(parts)}")
    for name, shape in shapes.items():
        dtype, got = layout[name]
        if got != tuple(shape):
            raise CheckpointError(f"{where}: {name} has shape {got}, the model config needs {tuple(shape)}")
        if dtype != np.dtype(config.dtype):
            raise CheckpointError(f"{where}: {name} is {dtype}, the model config says {config.dtype}")


def save_model(path, params: dict, config: ModelConfig, extra_meta: dict | None = None) -> None:
    """Write a model file.

    - path: destination file
    - params: dict name -> ndarray, exactly param_shapes(config) in config.dtype
    - config: the ModelConfig, stored as meta["model"]
    - extra_meta: more JSON metadata (tokens, specials, data, ...); may not use "kind" or "model"
    """
    save_files([model_file(path, params, config, extra_meta)])


def model_file(path, params: dict, config: ModelConfig, extra_meta: dict | None = None) -> tuple:
    """Check a model file's contents (as save_model takes them); returns (path, tensors, meta) for save_files."""
    path = os.fspath(path)
    extra_meta = dict(extra_meta or {})
    clash = sorted(set(extra_meta) & {"kind", "model", *RESERVED_META})
    if clash:
        raise CheckpointError(f"cannot save {path}: metadata keys {', '.join(clash)} are reserved")
    check_params(params, config, f"cannot save {path}")
    return path, params, {"kind": "model", "model": config.to_dict(), **extra_meta}


def load_model(path) -> tuple[dict, ModelConfig, dict]:
    """Read and validate a model file.

    - path: a model file, or a run directory: its best.safetensors, else its model.safetensors
      (layout.run_model_file, the file the CLI picks for the same directory)
    Output: (params dict name -> ndarray, ModelConfig, meta dict). CheckpointError on any problem.
    """
    path = os.fspath(path)
    path = run_model_file(path) if os.path.isdir(path) else path
    found = []

    def check(meta, layout):  # the kind, the config and every tensor's name, dtype and shape, from the header
        _check_kind(meta, "model", path)
        try:
            config = ModelConfig.from_dict(meta.get("model"))
        except ConfigError as exc:
            raise CheckpointError(f"bad checkpoint {path}: bad model config: {_one_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - a malformed config is a bad checkpoint
            raise CheckpointError(f"bad checkpoint {path}: bad model config: {type(exc).__name__}: "
                                  f"{_one_line(exc)}") from None
        _check_layout(layout, config, f"bad checkpoint {path}")
        found.append(config)

    params, meta = load_tensors(path, check=check)
    config = found[0]
    check_params(params, config, f"bad checkpoint {path}")  # the arrays read are what the header said
    return params, config, meta


def save_state(path, arrays: dict, meta: dict) -> None:
    """Write a training-state file (kind "state").

    - path: destination file
    - arrays: dict name -> ndarray (optimizer state, counters, ...)
    - meta: JSON metadata (RNG state, data position, ...); "kind" is set to "state"
    """
    save_files([state_file(path, arrays, meta)])


def state_file(path, arrays: dict, meta: dict) -> tuple:
    """Check a training-state file's metadata (as save_state takes it); returns (path, tensors, meta) for save_files."""
    if not isinstance(meta, dict):
        raise CheckpointError("checkpoint metadata must be a dict")
    return os.fspath(path), arrays, {**meta, "kind": "state"}


def load_state(path) -> tuple[dict, dict]:
    """Read and validate a training-state file.

    - path: a state file, or a run directory holding STATE_FILE
    Output: (arrays dict, meta dict). CheckpointError on any problem.
    """
    path = _resolve(path, STATE_FILE)
    arrays, meta = load_tensors(path, check=lambda meta, layout: _state_bound(meta, layout, path))
    _check_kind(meta, "state", path)
    return arrays, meta


def _state_bound(meta: dict, layout: dict, path: str) -> None:
    """CheckpointError, from the header, for a state file's tensor larger than any its run can hold: a
    parameter, an optimizer slot (a parameter's shape) or the carried state (layers x batch x hidden).
    The run's own checks (rundir.resume_run) name what else does not fit, once the tensors are read.
    A state without a model config (which no run can resume) has no bound here."""
    _check_kind(meta, "state", path)
    if "model" not in meta:
        return
    try:
        config = ModelConfig.from_dict(meta.get("model"))
    except Exception as exc:  # noqa: BLE001 - a malformed config is a bad checkpoint
        raise CheckpointError(f"bad checkpoint {path}: bad model config: {_one_line(exc)}") from None
    batch = (meta.get("train") or {}).get("batch_size") if isinstance(meta.get("train"), dict) else None
    batch = batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else 0
    largest = max([int(np.prod(shape)) for shape in param_shapes(config).values()]
                  + [config.layers * batch * config.hidden, 1])
    for name, (_, shape) in layout.items():
        if int(np.prod(shape, dtype=object)) > largest:
            raise CheckpointError(f"bad checkpoint {path}: tensor {name!r} of shape {shape} is larger than any "
                                  f"tensor of its run (at most {largest:,} numbers)")


def cleanup_temp_files(directory) -> list[str]:
    """Remove temp files (".*.tmp") left in a directory by an interrupted save.

    Call it before saving starts (it would also remove a concurrent save's temp file).
    - directory: the run directory; a missing one holds nothing to clean
    Output: sorted names of the files removed.
    """
    try:
        return atomic.cleanup_temp_files(directory)
    except OSError as exc:
        raise CheckpointError(f"cannot clean up {exc.filename or directory}: {_os_reason(exc)}") from None
