"""Finding and loading the models a run directory holds, and reading its stored data for sample and eval.

`find_checkpoint` turns a PATH (a model file, a run directory, or nothing: the newest run under
checkpoints/) into a model file; `load_checkpoint` loads it with its vocabulary and checked metadata.
The held-out split (`load_heldout`) and the novelty index (`novelty_index`) are read from the data folder
of the run a model file belongs to (`run_of`). Nothing here writes a run, except the novelty index it
stores for the next call when the run can be written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import numpy as np

from ..files import atomic, checkpoint, corpus
from ..data import novelty
from ..files.layout import CHECKPOINTS, DATA_DIR, MODEL_FILE, SNAPSHOTS_DIR, run_model_file
from ..files.modelmeta import check_model_meta
from ..tasks import registry as tasks
from ..errors import CharRNNError, CheckpointError, ConfigError, CorpusError, option
from ..data.vocab import Vocab
from .prepare import data_dir, data_path, read_split


def run_of(model_file: str) -> str:
    """The run directory a model file belongs to: its folder, or for a snapshot (--keep) the run above it."""
    folder = os.path.dirname(model_file)
    if os.path.basename(os.path.normpath(folder)) == SNAPSHOTS_DIR and os.path.isdir(data_dir(os.path.dirname(folder))):
        return os.path.dirname(folder)
    return folder


def load_heldout(model_file: str, lines: bool):
    """(ids, offsets or None) of the validation split stored in the run beside model_file, for scoring.

    ConfigError when there is none (a model file copied out of its run: then the command needs a TEXT_FILE);
    CheckpointError when it is there but damaged (a broken run, exit 1 like every damaged file).
    """
    directory = run_of(model_file)
    if not os.path.exists(data_path(directory, "val.npy")):
        raise ConfigError(f"{model_file} has no stored held-out split beside it; pass a TEXT_FILE")
    try:
        ids, offsets = read_split(directory, "val", lines)
        if lines:
            corpus.check_offsets(offsets, len(ids), data_path(directory, "val_offsets.npy"))
    except CharRNNError as exc:
        raise CheckpointError(f"the held-out split stored in {data_dir(directory)} is damaged: {exc}") from None
    return ids, offsets



def find_checkpoint(path: str | None) -> str:
    """The model file to use: PATH (a file, or a run directory), else the newest run under checkpoints/."""
    if path is None:
        candidates = []
        if os.path.isdir(CHECKPOINTS):
            for entry in os.scandir(CHECKPOINTS):
                model_file = os.path.join(entry.path, MODEL_FILE)
                if entry.is_dir() and os.path.isfile(model_file):
                    candidates.append((os.path.getmtime(model_file), entry.path))
        if not candidates:
            raise CheckpointError(f"no trained model under {CHECKPOINTS}/; train one with `charrnn train` "
                                  f"or pass {option('path')}")
        path = max(candidates)[1]
    if os.path.isdir(path):
        model_file = run_model_file(path)
        if os.path.isfile(model_file):
            return model_file
        runs = sorted((os.path.getmtime(run_model_file(e.path)), e.name) for e in _entries(path)
                      if e.is_dir() and os.path.isfile(run_model_file(e.path)))
        if runs:
            names = [name for _, name in sorted(runs, key=lambda r: r[1])]
            shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
            raise CheckpointError(f"{path} is a folder of runs, not a run: pass one of them, such as "
                                  f"{option('path', os.path.join(path, runs[-1][1]))} (the newest); it holds {shown}")
        raise CheckpointError(f"{path} is a folder that holds no {MODEL_FILE}: neither a run directory nor a "
                              f"folder of runs")
    if not os.path.exists(path):
        raise CheckpointError(f"no such checkpoint: {path}")
    if _looks_like_text(path):
        raise CheckpointError(f"{path} is a text file, not a model: {option('path')} takes a run directory or a "
                              f".safetensors model file (to score this text: charrnn eval {path} -c RUN)")
    return path


def _entries(path):
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _looks_like_text(path) -> bool:
    """Whether a file is text rather than a model: a safetensors file starts with its header's length (8
    bytes, a NUL among them for any header under 72 PB) and then "{"; text has no NUL in its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False  # load_model names what is wrong
    if len(head) >= 9 and head[8:9] == b"{":
        return False
    return bool(head) and b"\0" not in head


def load_checkpoint(path: str | None):
    """(params, config, vocab, meta, model_file) from a checkpoint path or the latest run (see find_checkpoint)."""
    model_file = find_checkpoint(path)
    params, config, meta = checkpoint.load_model(model_file)
    try:
        vocab = Vocab.from_dict({"level": meta.get("level", "char"), "tokens": meta["tokens"],
                                 "special": meta["special"]})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{model_file}: missing vocabulary entry {exc}") from None
    except CharRNNError as exc:
        raise CheckpointError(f"{model_file}: bad vocabulary: {exc}") from None
    if vocab.size != config.vocab_size:
        raise CheckpointError(f"{model_file}: {vocab.size} tokens but the model expects {config.vocab_size}")
    check_model_meta(meta, model_file)
    tasks.of_model(config, meta, model_file)  # the task's own entries (a classifier's labels), checked
    return params, config, vocab, meta, model_file


# ---------------------------------------------------------------- the novelty index (charrnn sample --novelty)

NOVELTY_INDEX = "train_index.npy"  # in data/: the stream-mode index of the training ids (novelty.gram_order)
RUN_TOKENS = 1 << 20               # positions sorted in memory at once while the index is built (one run)
_STAMP_BYTES = 32                  # the index file starts with the sha256 of the ids it indexes


def ids_digest(ids) -> bytes:
    """sha256 of an id array's values as stored (its dtype and length too), read a slice at a time."""
    h = hashlib.sha256(f"{np.dtype(ids.dtype).str} {len(ids)};".encode("ascii"))
    step = 1 << 24
    for start in range(0, len(ids), step):
        h.update(np.ascontiguousarray(ids[start : start + step]))
    corpus.release_pages(ids)
    return h.digest()


def _stored_order(path: str, ids, digest: bytes):
    """The order stored at path when it is the index of exactly these ids (its stamp is their digest), else None."""
    if not os.path.exists(path):
        return None
    try:
        stored = corpus.load_ids(path)
    except CharRNNError:
        return None
    head = _STAMP_BYTES // stored.dtype.itemsize
    if stored.dtype != novelty.order_dtype(len(ids)) or len(stored) != head + len(ids):
        return None
    if np.asarray(stored[:head]).tobytes() != digest:
        return None  # another corpus's (same length or not): build it again
    return stored[head:]


def build_stream_index(ids, path: str, spill: str, digest: bytes) -> None:
    """Write the stream index of ids to path (atomically): its digest, then every position sorted by its
    packed key, ties by position (novelty.gram_order's order), by an external merge sort.

    Runs of RUN_TOKENS positions are sorted in memory one at a time and written to the folder spill; they
    are then merged a block of each at a time (novelty.merge_runs), straight into path. Memory is a
    constant (a run, the merge's blocks) plus the memory-mapped ids; the disk holds the runs meanwhile
    (4 or 8 bytes a token, as the index). CorpusError when a file cannot be written.
    """
    n = len(ids)
    bits, k = novelty.gram_width(ids) if n else (1, 1)
    dtype = novelty.order_dtype(n)
    runs = []
    for number, start in enumerate(range(0, n, RUN_TOKENS)):
        run_path = os.path.join(spill, f"run{number}.npy")
        corpus.save_ids(run_path, novelty.sorted_run(ids, start, min(n, start + RUN_TOKENS), bits, k).astype(dtype))
        runs.append(corpus.load_ids(run_path))
        corpus.release_pages(ids)
    stamp = np.frombuffer(digest, dtype=dtype)

    def write(f):
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": (len(stamp) + n,)})
        f.write(stamp.tobytes())
        for part in novelty.merge_runs(ids, runs, bits, k, RUN_TOKENS):
            f.write(part.astype(dtype).tobytes())
            corpus.release_pages(ids)
            for run in runs:
                corpus.release_pages(run)
    try:
        atomic.write_file(path, write)
    except OSError as e:
        raise CorpusError(f"{path}: cannot write the novelty index: {e.strerror or e}") from None


def line_index(ids, offsets, spill: str):
    """A novelty.LineIndex of the lines (ids, offsets) whose sorted hashes and order are built by an external
    merge sort in the folder spill (runs of RUN_TOKENS lines) and memory-mapped from there: a constant plus
    the mapped files, not 16 bytes a line in memory."""
    n = len(offsets) - 1
    dtype = novelty.order_dtype(n)
    hash_runs, line_runs = [], []
    for number, (hashes, order) in enumerate(novelty.line_hash_runs(ids, offsets, RUN_TOKENS)):
        base = os.path.join(spill, f"{len(os.listdir(spill))}-")
        corpus.save_ids(base + "hashes.npy", hashes)
        corpus.save_ids(base + "lines.npy", order.astype(dtype))
        hash_runs.append(corpus.load_ids(base + "hashes.npy"))
        line_runs.append(corpus.load_ids(base + "lines.npy"))
        corpus.release_pages(ids)
        corpus.release_pages(offsets)
    merged = {}
    for which, out_dtype in (("hashes", np.uint64), ("lines", dtype)):
        path = os.path.join(spill, f"{len(os.listdir(spill))}-{which}.npy")

        def write(f, which=which, out_dtype=out_dtype):
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(out_dtype)),
                                                     "fortran_order": False, "shape": (n,)})
            for keys, lines in novelty.merge_sorted(line_runs, lambda r, lo, hi, part: np.asarray(hash_runs[r][lo:hi]),
                                                    RUN_TOKENS):
                f.write((keys if which == "hashes" else lines).astype(out_dtype).tobytes())
                for run in (*hash_runs, *line_runs):
                    corpus.release_pages(run)
        try:
            atomic.write_file(path, write)
        except OSError as e:
            raise CorpusError(f"{path}: cannot write the novelty index: {e.strerror or e}") from None
        merged[which] = corpus.load_ids(path) if n else np.zeros(0, dtype=out_dtype)
    return novelty.LineIndex(ids, offsets, merged["hashes"], merged["lines"])


def _spilled(directory, build):
    """build(spill folder), the folder a temp one in the run's data/ (else the system's: a read-only run),
    removed afterwards: what build mapped from it stays mapped."""
    try:
        with tempfile.TemporaryDirectory(prefix=".lines_index.", suffix=".tmp", dir=data_dir(directory)) as spill:
            return build(spill)
    except (OSError, CorpusError):
        spill = tempfile.mkdtemp(prefix="charrnn-index-")
        try:
            return build(spill)
        finally:
            shutil.rmtree(spill, ignore_errors=True)


def novelty_index(model_file: str, lines: bool):
    """The index that tells how new a sample of the model in model_file is; returns (index, built now).

    - lines: (LineIndex of the training lines, LineIndex of the validation lines or None), each built for
      this call by an external merge sort of its line hashes (line_index), in bounded memory
    - stream: a novelty.StreamIndex, read from data/train_index.npy or built and stored there (where the
      run directory cannot be written, it is built in a temp folder for this call only). The stored index
      starts with the sha256 of the training ids it indexes: ids that changed, whatever their length,
      get a new index. It is built by an external merge sort (build_stream_index), in bounded memory.
    ConfigError when no training data is stored beside the model (a model file copied out of its run).
    """
    directory = run_of(model_file)
    if not os.path.exists(data_path(directory, "train.npy")):
        raise ConfigError(f"{option('novelty')} compares samples with the training text stored beside the model, and "
                          f"{model_file} has none ({DATA_DIR}/train.npy)")
    try:
        ids, offsets = read_split(directory, "train", lines)
        if lines:
            corpus.check_offsets(offsets, len(ids), data_path(directory, "train_offsets.npy"), min_lines=1)
    except CharRNNError as exc:
        raise CheckpointError(f"the training split stored in {data_dir(directory)} is damaged: {exc}") from None
    if lines:
        try:
            val = read_split(directory, "val", True)
            corpus.check_offsets(val[1], len(val[0]), data_path(directory, "val_offsets.npy"))
        except CharRNNError:
            val = None
        return _spilled(directory, lambda spill: (line_index(ids, offsets, spill),
                                                  None if val is None else line_index(*val, spill))), True
    path = data_path(directory, NOVELTY_INDEX)
    digest = ids_digest(ids)
    order = _stored_order(path, ids, digest)
    if order is not None:
        return novelty.StreamIndex(ids, order), False
    try:
        with tempfile.TemporaryDirectory(prefix=".train_index.", suffix=".tmp", dir=data_dir(directory)) as spill:
            build_stream_index(ids, path, spill, digest)
    except (OSError, CorpusError):  # a read-only run: the index serves this call only, built in a temp folder
        spill = tempfile.mkdtemp(prefix="charrnn-index-")
        try:
            path = os.path.join(spill, NOVELTY_INDEX)
            build_stream_index(ids, path, spill, digest)
            order = _stored_order(path, ids, digest)  # mapped; the folder's files go, the mapping stays
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        return novelty.StreamIndex(ids, order), True
    return novelty.StreamIndex(ids, _stored_order(path, ids, digest)), True
