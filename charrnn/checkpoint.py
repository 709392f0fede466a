"""Checkpoint files: safetensors with charrnn's JSON metadata, written atomically, read defensively.

A file is standard safetensors (loadable by `safetensors.numpy.load_file` and,
for models, by `torch.nn.Module.load_state_dict` after conversion), with

    __metadata__ = {"charrnn": json.dumps({"format_version": 1, "charrnn_version": "...",
                                           "kind": "model" | "state", ...})}

Layout on disk: 8 bytes little-endian header length N, N bytes of JSON header
(padded with spaces to a multiple of 8), then the tensors' raw little-endian
bytes back to back. Nothing here ever unpickles: loading parses and checks the
header before reading any tensor data, and every failure is a CheckpointError
with a one-line message.

Writes go to a hidden temp file in the target's directory, are fsynced, then
renamed over the target, so a crash or a full disk never leaves a half-written
checkpoint in place of a good one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import stat

import numpy as np

from . import __version__
from .errors import CheckpointError, ConfigError
from .layout import MODEL_FILE, STATE_FILE  # what load_model and load_state read when given a run directory
from .model import ModelConfig, param_shapes

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000     # the same limit as the safetensors library
RESERVED_META = ("format_version", "charrnn_version", "kind")

# safetensors dtype tag <-> little-endian NumPy dtype (the ones charrnn can produce).
_DTYPES = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
}
_TAGS = {(dt.kind, dt.itemsize): tag for tag, dt in _DTYPES.items()}


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _os_reason(exc: OSError) -> str:
    return exc.strerror or _one_line(exc) or type(exc).__name__


# ---------------------------------------------------------------- writing


def _prepare(tensors: dict) -> list[tuple[str, str, np.ndarray]]:
    """Validate tensors and return (name, dtype tag, contiguous little-endian array), in file order."""
    if not isinstance(tensors, dict):
        raise CheckpointError("tensors to save must be a dict name -> array")
    items = []
    for name, arr in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise CheckpointError(f"cannot save tensor named {name!r}")
        if not isinstance(arr, np.ndarray):
            raise CheckpointError(f"cannot save {name}: not a NumPy array ({type(arr).__name__})")
        tag = _TAGS.get((arr.dtype.kind, arr.dtype.itemsize))
        if tag is None:
            raise CheckpointError(f"cannot save {name}: unsupported dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CheckpointError(f"refusing to save {name}: it holds NaN or infinite values")
        # asarray, not ascontiguousarray: the latter turns 0-d arrays into 1-d ones.
        data = np.asarray(arr, dtype=_DTYPES[tag], order="C")
        items.append((name, tag, data))
    # Widest items first keeps every tensor aligned to its itemsize in the file.
    items.sort(key=lambda it: (-it[2].dtype.itemsize, it[0]))
    return items


def _encode_header(items, meta: dict) -> bytes:
    if not isinstance(meta, dict):
        raise CheckpointError("checkpoint metadata must be a dict")
    full = {k: v for k, v in meta.items() if k not in ("format_version", "charrnn_version")}
    full["format_version"] = FORMAT_VERSION
    full["charrnn_version"] = __version__
    try:
        # ASCII-only and strict JSON (no NaN), so any safetensors reader accepts it.
        meta_json = json.dumps(full, ensure_ascii=True, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serializable: {_one_line(exc)}") from None
    header = {"__metadata__": {"charrnn": meta_json}}
    offset = 0
    for name, tag, data in items:
        header[name] = {"dtype": tag, "shape": list(data.shape), "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    raw = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    raw += b" " * (-(8 + len(raw)) % 8)  # pad so the data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def _write_all(fd: int, buf) -> None:
    view = memoryview(buf)
    while view.nbytes:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_directory(directory: str) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems do not support fsync on a directory; the rename still happened.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


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
    Every file is first written in full to a temp file beside its target and
    fsynced; only then are the temp files renamed over their targets, in list
    order, and the directories fsynced. A failure while writing (such as a full
    disk) removes the temp files and leaves every target as it was. A crash
    between two renames leaves the earlier targets new and the later ones old,
    each of them whole.
    """
    staged = []  # (temp path, target path)
    try:
        for path, tensors, meta in files:
            path = os.fspath(path)
            staged.append((_write_temp(path, tensors, meta), path))
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise CheckpointError(f"cannot write checkpoint {path}: {_os_reason(exc)}") from None
        staged = []
        for directory in sorted({os.path.dirname(os.path.abspath(path)) for path, _, _ in files}):
            try:
                _fsync_directory(directory)
            except OSError as exc:
                raise CheckpointError(f"cannot write checkpoint in {directory}: {_os_reason(exc)}") from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _write_temp(path: str, tensors: dict, meta: dict) -> str:
    """Write the file for path to a new hidden temp file beside it, fsynced; returns the temp path.

    Removes the temp file and raises CheckpointError when the input is bad or the OS refuses.
    """
    items = _prepare(tensors)
    header = _encode_header(items, meta)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    tmp = None
    try:
        # O_EXCL with mode 0o666 lets the kernel apply the umask (0644 under 022),
        # unlike mkstemp's 0600.
        while tmp is None:
            candidate = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                tmp = candidate
            except FileExistsError:
                continue
        try:
            _write_all(fd, header)
            for _, _, data in items:
                if data.nbytes:
                    _write_all(fd, data.reshape(-1).view(np.uint8))
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise CheckpointError(f"cannot write checkpoint {path}: {_os_reason(exc)}") from None


# ---------------------------------------------------------------- reading


def _reject_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_header(raw: bytes, data_len: int) -> tuple[list, dict]:
    """Validate the JSON header; output: ([(name, dtype, shape, begin, end)], charrnn meta dict)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"header is not valid JSON ({_one_line(exc)})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")

    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not name:
            raise ValueError("a tensor has an empty name")
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise ValueError(f"tensor {name!r}: unsupported dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 32 or not all(_is_int(d) and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r}: bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise ValueError(f"tensor {name!r}: bad data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise ValueError(f"tensor {name!r}: data_offsets {offsets} outside the {data_len}-byte data section")
        if end - begin != math.prod(shape) * dtype.itemsize:  # Python ints: no overflow
            raise ValueError(f"tensor {name!r}: shape {shape} does not match its {end - begin} bytes")
        entries.append((name, dtype, tuple(shape), begin, end))

    # The tensors must tile the data section exactly: no gaps, no overlaps.
    position = 0
    for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != position:
            kind = "overlaps another tensor" if begin < position else "leaves a gap before it"
            raise ValueError(f"tensor {name!r} {kind}")
        position = end
    if position != data_len:
        raise ValueError(f"{data_len - position} bytes of data belong to no tensor")

    outer = header.get("__metadata__")
    if not isinstance(outer, dict) or not isinstance(outer.get("charrnn"), str):
        raise ValueError("no charrnn metadata (not a charrnn checkpoint)")
    if not all(isinstance(v, str) for v in outer.values()):
        raise ValueError("__metadata__ values must be strings")
    try:
        meta = json.loads(outer["charrnn"], object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"charrnn metadata is not valid JSON ({_one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise ValueError("charrnn metadata is not a JSON object")
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise ValueError(f"missing or invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"written by a newer charrnn (format {version}); upgrade charrnn")
    return entries, meta


def _read_exact(f, n: int) -> bytearray:
    buf = bytearray(n)
    got = f.readinto(buf)
    if got != n:
        raise ValueError(f"file ended early ({got} of {n} bytes)")
    return buf


def _load(path: str, max_bytes: int) -> tuple[dict, dict]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except OSError as exc:
        raise ValueError(_os_reason(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError("is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("is not a regular file")
    size = st.st_size
    if size == 0:
        raise ValueError("file is empty")
    if size < 8:
        raise ValueError(f"file is too short ({size} bytes)")
    if size > max_bytes:
        raise ValueError(f"file is larger than the {max_bytes}-byte limit ({size} bytes)")
    with open(path, "rb") as f:
        n = int.from_bytes(_read_exact(f, 8), "little")
        # Checked before allocating anything of size n: a forged length cannot exhaust memory.
        if n > size - 8:
            raise ValueError(f"header length {n} is larger than the file ({size} bytes); truncated or not a checkpoint")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if n < 2:
            raise ValueError(f"header length {n} is too small")
        raw = bytes(_read_exact(f, n))
        if raw[:1] != b"{":
            raise ValueError("header does not start with '{'; not a safetensors file")
        data_len = size - 8 - n
        entries, meta = _parse_header(raw, data_len)
        data = _read_exact(f, data_len)
        if f.read(1):
            raise ValueError("file grew while being read")

    tensors = {}
    for name, dtype, shape, begin, end in entries:
        arr = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin).reshape(shape)
        # Views into one writable buffer, except where a foreign writer left data misaligned.
        if not arr.flags.aligned or not dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"tensor {name!r} holds NaN or infinite values")
        tensors[name] = arr
    return tensors, meta


def load_tensors(path, max_bytes: int = 2**34) -> tuple[dict, dict]:
    """Read and validate a checkpoint file.

    - path: the file (str or PathLike)
    - max_bytes: refuse files larger than this
    Output: (tensors: dict name -> writable ndarray, meta: the charrnn metadata dict,
    "format_version" and "charrnn_version" included). Every failure is a CheckpointError.
    """
    try:
        path = os.fspath(path)
        return _load(path, max_bytes)
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
    """CheckpointError, its message starting with `where`, unless params are exactly param_shapes(config)
    in config.dtype."""
    _check_params(params, config, where)


def _check_params(params: dict, config: ModelConfig, where: str) -> None:
    """Exactly param_shapes(config), each with config.dtype; CheckpointError naming what differs."""
    shapes = param_shapes(config)
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: parameters must be a dict")
    missing = [k for k in shapes if k not in params]
    extra = sorted(k for k in params if k not in shapes)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing tensors " + ", ".join(missing))
        if extra:
            parts.append("unexpected tensors " + ", ".join(extra))
        raise CheckpointError(f"{where}: {'; '.join(parts)}")
    for name, shape in shapes.items():
        arr = params[name]
        if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
            got = arr.shape if isinstance(arr, np.ndarray) else type(arr).__name__
            raise CheckpointError(f"{where}: {name} has shape {got}, the model config needs {tuple(shape)}")
        if arr.dtype != np.dtype(config.dtype):
            raise CheckpointError(f"{where}: {name} is {arr.dtype}, the model config says {config.dtype}")


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
    _check_params(params, config, f"cannot save {path}")
    return path, params, {"kind": "model", "model": config.to_dict(), **extra_meta}


def load_model(path) -> tuple[dict, ModelConfig, dict]:
    """Read and validate a model file.

    - path: a model file, or a run directory holding MODEL_FILE
    Output: (params dict name -> ndarray, ModelConfig, meta dict). CheckpointError on any problem.
    """
    path = _resolve(path, MODEL_FILE)
    params, meta = load_tensors(path)
    _check_kind(meta, "model", path)
    try:
        config = ModelConfig.from_dict(meta.get("model"))
    except ConfigError as exc:
        raise CheckpointError(f"bad checkpoint {path}: bad model config: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed config is a bad checkpoint
        raise CheckpointError(f"bad checkpoint {path}: bad model config: {type(exc).__name__}: {_one_line(exc)}") from None
    _check_params(params, config, f"bad checkpoint {path}")
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
    arrays, meta = load_tensors(path)
    _check_kind(meta, "state", path)
    return arrays, meta


def cleanup_temp_files(directory) -> list[str]:
    """Remove temp files (".*.tmp") left in a directory by an interrupted save.

    Call it before saving starts (it would also remove a concurrent save's temp file).
    - directory: the run directory; a missing one holds nothing to clean
    Output: sorted names of the files removed.
    """
    directory = os.fspath(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CheckpointError(f"cannot list {directory}: {_os_reason(exc)}") from None
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CheckpointError(f"cannot remove {entry.path}: {_os_reason(exc)}") from None
            removed.append(entry.name)
    return sorted(removed)
