"""Which run a state file belongs to: the run's id and the fingerprints of its vocabulary and data.

A state file belongs to one run: it carries the run's id and that fingerprint, and resuming checks
them against the directory's run.json and data (`proven_identity`, the one place a state is matched to
its run) before anything in the directory is written. A run made before run ids adopts one on its
first resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets

import numpy as np

from ..files import atomic, checkpoint
from ..files.layout import DATA_DIR, MODEL_FILE, RUN_FILE, STATE_FILE
from ..errors import CharRNNError, CheckpointError
from ..data.vocab import Vocab

_SAMPLES, _SAMPLE_IDS = 16, 8192  # an id file of more than 16 x 8192 ids is fingerprinted by 16 evenly spaced slices
_HEX = {"id": re.compile(r"[0-9a-f]{32}"), "vocab": re.compile(r"[0-9a-f]{64}"), "data": re.compile(r"[0-9a-f]{64}")}


def fingerprint(vocab: Vocab, data: tuple) -> dict:
    """{"vocab": hex, "data": hex}: sha256 of the vocabulary (and the task's names: a classifier's labels), and
    of the stored ids (and the task's arrays: a classifier's label ids).

    - data: what prepare.load_data returns (ids and offsets, None where a mode has none, and the task's data)
    The ids are hashed as values (int64), with their names and lengths, so a file written with another
    dtype holds the same data; a long one by 16 slices of 8192 ids at evenly spaced places (its first
    and last among them), so that resuming reads about a megabyte, not the corpus.
    """
    words = json.dumps([vocab.to_dict(), list(data[4].names)], ensure_ascii=True, sort_keys=True)
    h = hashlib.sha256()
    names = ("train", "val", "train_offsets", "val_offsets", "labels")  # the last: the task's arrays
    for name, arr in zip(names, (*data[:4], data[4].arrays)):
        for i, part in enumerate(arr if isinstance(arr, tuple) else (arr,)):
            if part is None:
                continue
            n = len(part)
            h.update(f"{name}.{i} {n};".encode("ascii"))
            if n <= _SAMPLES * _SAMPLE_IDS:
                h.update(np.asarray(part, dtype="<i8").tobytes())
            else:
                for k in range(_SAMPLES):
                    start = (n - _SAMPLE_IDS) * k // (_SAMPLES - 1)
                    h.update(np.asarray(part[start:start + _SAMPLE_IDS], dtype="<i8").tobytes())
    return {"vocab": hashlib.sha256(words.encode("ascii")).hexdigest(), "data": h.hexdigest()}


def _checked_identity(record, where: str) -> dict:
    """A run identity as run.json or a state file holds it: {"id": 32 hex, "vocab": 64 hex, "data": 64 hex}."""
    if not (isinstance(record, dict) and all(isinstance(record.get(k), str) and pattern.fullmatch(record[k])
                                             for k, pattern in _HEX.items())):
        raise CheckpointError(f"{where}: the run's identity is malformed (expected an id and two fingerprints)")
    return {k: record[k] for k in _HEX}


def _read_identity(directory) -> dict | None:
    """The identity recorded in directory/run.json; None when there is none (a run made before run ids)."""
    path = os.path.join(directory, RUN_FILE)
    if not os.path.lexists(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        record = json.loads(data.decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path} is damaged: not the JSON charrnn writes") from None
    return _checked_identity(record, path)


def write_identity(directory, identity: dict) -> None:
    text = json.dumps({**identity, "note": "charrnn: this run's id and the fingerprints of its vocabulary and data"},
                      indent=1, sort_keys=True) + "\n"
    try:
        atomic.write_file(os.path.join(directory, RUN_FILE), lambda f: f.write(text.encode("ascii")))
    except OSError as exc:
        raise CheckpointError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None


def proven_identity(directory, saved, vocab: Vocab, data: tuple, where: str, writer: bool) -> dict:
    """The run's identity, once the state file at `where` is proven to belong to the run in directory.

    - saved: the state's "run" entry (None in a state saved before run ids)
    - vocab: the state's; data: the directory's stored ids and the task's data (prepare.load_data)
    The one place a state is matched to its run, before anything is written: its id must be the one in
    run.json, and the vocabulary and data it was saved with must be the directory's. A run without
    run.json (made before run ids) is checked against what else it holds (its model file's vocabulary,
    ids that fit the vocabulary) and adopts the state's id, or a new one: run.json is written (writer only).
    CheckpointError names what does not fit.
    """
    own = fingerprint(vocab, data)
    if saved is not None:
        saved = _checked_identity(saved, f"{where}: run")

    def foreign(why):
        return CheckpointError(f"{where} does not belong to the run in {directory}: {why}. Resuming it would "
                               f"overwrite the run's model; put the run's own {STATE_FILE} back, or resume the "
                               f"run it came from")
    recorded = _read_identity(directory)
    if recorded is not None:
        if saved is not None and saved["id"] != recorded["id"]:
            raise foreign(f"it was saved by run {saved['id'][:12]}, and this is run {recorded['id'][:12]}")
        if saved is not None and saved != recorded:
            raise foreign(f"its fingerprints are not those in {RUN_FILE}")
        if own["vocab"] != recorded["vocab"]:
            raise foreign("its vocabulary is not the run's")
        if own["data"] != recorded["data"]:
            raise CheckpointError(f"the run's data in {directory}/{DATA_DIR} are not those it was started with "
                                  f"({RUN_FILE} holds their fingerprint); put them back, or start a new run")
        return recorded
    # a run made before run ids (or whose run.json is gone)
    if saved is not None:
        if own["vocab"] != saved["vocab"]:
            raise CheckpointError(f"{where}: its vocabulary does not match the fingerprint it was saved with")
        if own["data"] != saved["data"]:
            raise foreign(f"it was saved with other data than the run's ({DATA_DIR}/)")
    for name, ids in (("train.npy", data[0]), ("val.npy", data[1])):
        if len(ids) and int(ids.max()) >= vocab.size:
            raise foreign(f"{DATA_DIR}/{name} holds token id {int(ids.max())}, beyond its {vocab.size}-token "
                          f"vocabulary")
    try:
        meta = checkpoint.load_model(os.path.join(directory, MODEL_FILE))[2]
        model_vocab = Vocab.from_dict({"level": meta.get("level", "char"), "tokens": meta["tokens"],
                                       "special": meta["special"]})
    except (CharRNNError, OSError, KeyError, TypeError):
        model_vocab, meta = None, {}  # missing or unreadable: nothing to compare (the catch-up writes it afresh)
    if model_vocab is not None and model_vocab.to_dict() != vocab.to_dict():
        raise foreign(f"its vocabulary is not that of the run's {MODEL_FILE}")
    model_id = meta.get("run_id")
    if saved is not None and isinstance(model_id, str) and model_id != saved["id"]:
        raise foreign(f"it was saved by run {saved['id'][:12]}, and the run's {MODEL_FILE} by run {model_id[:12]}")
    identity = {"id": saved["id"] if saved else secrets.token_hex(16), **own}
    if writer:
        write_identity(directory, identity)
    return identity



def new_identity(directory, vocab: Vocab, data: tuple) -> dict:
    """A new run's identity (a fresh id and the fingerprints of its data), written to its run.json."""
    identity = {"id": secrets.token_hex(16), **fingerprint(vocab, data)}
    write_identity(directory, identity)
    return identity
