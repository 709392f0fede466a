"""The metadata schema of a model file: what `rundir.model_meta` writes beside the weights, checked when read.

A model file carries JSON metadata (checkpoint.py stores it in the safetensors header): the vocabulary,
the data options ("data"), a training summary ("training"), a classifier's label names ("labels") and,
for a fine-tuned run, where it started ("origin"). Readers (sample, eval, info, classify, annotate)
go through `check_model_meta` and `checked_labels`, so a hostile file gets one CheckpointError
that names the bad entry. The schema belongs to the file format; nothing here touches a file.
"""

from __future__ import annotations

from . import corpus
from .config import MODES, is_number
from ..errors import CharRNNError, CheckpointError


def checked_labels(labels, n: int | None, where: str) -> tuple:
    """The label names of a classifier (a model file's "labels", or a run's labels.json), as a tuple;
    CheckpointError unless they are a list of n (or at least 2) distinct non-empty names."""
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)
            and len(set(labels)) == len(labels) and (n is None or len(labels) == n)):
        raise CheckpointError(f"{where}: the labels must be a list of {n or 'at least 2'} distinct names")
    return tuple(labels)


def check_model_meta(meta: dict, where: str) -> None:
    """CheckpointError unless the "data" and "training" entries of a model file's metadata (as model_meta
    writes them, read by sample, eval and info) are well-formed where present."""
    def number(value, integer=False):
        return is_number(value, integer) and (not integer or abs(value) < 2**63)
    data, training = meta.get("data", {}), meta.get("training", {})
    problem = None
    if not isinstance(data, dict) or not isinstance(training, dict):
        problem = "'data' and 'training' must be JSON objects"
    elif data.get("mode", "stream") not in MODES:
        problem = f"unknown data mode {data.get('mode')!r}"
    elif not number(data.get("seq_len", 1), integer=True):
        problem = f"bad data seq_len {data.get('seq_len')!r}"
    elif not _known_encoding(data.get("encoding", corpus.DEFAULT_ENCODING)):
        problem = f"unknown data encoding {data.get('encoding')!r:.60}"
    else:
        for key in ("step", "epoch", "elapsed", "best_val_loss", "lr"):
            value = training.get(key, 0)
            if not (number(value, integer=key == "step") or (key == "best_val_loss" and value is None)):
                problem = f"bad training {key} {value!r:.40}"
                break
        if problem is None and not isinstance(training.get("optimizer", ""), str):
            problem = f"bad training optimizer {training.get('optimizer')!r}"
    if problem is None and "origin" in meta:
        problem = _origin_problem(meta["origin"])
    if problem is None:
        strings = list(meta.get("tokens", [])) + list(meta.get("labels", []) or []) \
            if isinstance(meta.get("tokens", []), list) and isinstance(meta.get("labels", []), list) else []
        odd = next((t for t in strings if isinstance(t, str) and not _encodable(t)), None)
        if odd is not None:  # a lone surrogate: no text holds one, and no terminal or file can take it
            problem = f"the token or label {odd!r:.40} is not Unicode text (a lone surrogate)"
    if problem:
        raise CheckpointError(f"{where}: {problem}")


def _known_encoding(name) -> bool:
    try:
        corpus.text_encoding(name)
        return True
    except CharRNNError:
        return False


def _encodable(text: str) -> bool:
    """Whether text can be written as UTF-8: it holds no lone surrogate (corpus._is_utf8 is about an encoding's name)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _origin_problem(origin) -> str | None:
    """What is wrong with a model file's "origin" entry (as finetune.origin writes it), or None."""
    if not isinstance(origin, dict):
        return f"bad origin {origin!r:.40}: not a JSON object"
    counts = {"step": True, "base_tokens": False, "unk_tokens": False, "n_unseen": False}  # name: may be None
    for key, nullable in counts.items():
        value = origin.get(key)
        if key in origin and not ((value is None and nullable) or (is_number(value, integer=True)
                                                                     and 0 <= value < 2**63)):
            return f"bad origin {key} {value!r:.40}"
    if not isinstance(origin.get("model_file", ""), str):
        return f"bad origin model_file {origin.get('model_file')!r:.40}"
    if origin.get("vocab", "kept") not in ("kept", "extended"):
        return f"bad origin vocab {origin.get('vocab')!r:.40}"
    for key in ("added", "unseen"):
        value = origin.get(key, [])
        if not (isinstance(value, list) and all(isinstance(t, str) and _encodable(t) for t in value)):
            return f"bad origin {key} {value!r:.40}: not a list of tokens"
    return None

