"""The sequence tagger: embedding -> recurrent layers (one or two directions) -> a head at every step.

The course notes' many-to-many architecture with equal lengths (their
named-entity example: one tag per input token). It runs the classifier's
layer stack (classifier.stack_forward / stack_backward: any cell, stacked,
optionally bidirectional, padded rows each reversed within its own length), so
the two share every line of the recurrence; where the classifier pools the top
layer's outputs over time, the tagger scores its C tags at every step with one
linear head, `head.weight` (C, D*H) and `head.bias` (C,), PyTorch's per-step
nn.Linear over nn.LSTM's output.

The loss is the NLL of the true tags summed over the real tokens (a padded
position, t >= lengths[b], is masked out) and divided by their count: the mean
per token. A batch cut into row blocks (parallel.py) passes the whole batch's
token count as `count`, so that the blocks' gradients add up to the batch's.

`metrics` scores predicted tags against true ones: token accuracy, each tag's
precision, recall and F1, and, when every tag is O, B-x or I-x, the entities
counted as seqeval counts them (see `entities`).

Shapes: B batch, T time steps (the longest sequence), H hidden, D directions,
C tags, N tokens of many sequences back to back.
"""

from __future__ import annotations

import numpy as np

from . import classifier
from .loss import mean_nll, softmax_nll, softmax_nll_backward
from ..errors import ConfigError


def _inside(lengths, T: int) -> np.ndarray:
    """(T, B) bool: position t of row b is a real token."""
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def forward(params, config, tokens, lengths, tags=None, *, dropout_rng=None, keep=True):
    """Tag a padded batch of sequences.

    - tokens: (B, T) token ids; lengths: (B,) real tokens per row; tags: (B, T) tag ids (padding ignored),
      or None to skip the loss
    - dropout_rng: a Generator to train with dropout; keep: keep what `backward` needs
    Returns (loss, probs, cache): the mean NLL per real token in nats (0.0 without tags), the tag
    probabilities (T, B, C) (padded positions hold the head's output on padding: ignore them), and the
    cache (None unless keep).
    """
    if config.classes < 2:
        raise ConfigError("this model is a language model, not a tagger")
    lengths = np.asarray(lengths, dtype=np.int64)
    Y, stack_cache = classifier.stack_forward(params, config, tokens, lengths, keep=keep, dropout_rng=dropout_rng)
    T, B, DH = Y.shape
    logits = Y.reshape(T * B, DH) @ params["head.weight"].T + params["head.bias"]  # (T*B, C)
    inside = _inside(lengths, T).reshape(-1)  # (T*B,)
    loss, targets = 0.0, None
    if tags is not None:
        tags = np.asarray(tags, dtype=np.int64)
        if tags.shape != (B, T):
            raise ConfigError(f"tags must be (B, T) = {(B, T)}, got {tags.shape}")
        targets = np.where(inside, tags.T.reshape(-1), 0)  # (T*B,) time-major, as the logits; padding: id 0
        if targets.size and (targets.min() < 0 or targets.max() >= config.classes):
            raise ConfigError(f"tags must be ids in [0, {config.classes})")
    probs, nll = softmax_nll(logits, targets)  # (T*B, C), (T*B,) or None
    if nll is not None:
        n = int(inside.sum())
        loss = float(nll[inside].sum(dtype=np.float64) / max(n, 1))
    cache = None
    if keep:
        cache = {"stack": stack_cache, "Y": Y, "probs": probs, "targets": targets, "inside": inside}
    return loss, probs.reshape(T, B, -1), cache


def backward(params, config, cache, count: int | None = None):
    """Gradients of the loss from `forward` (with tags): a dict with params' keys and shapes.

    - count: the number of real tokens the loss is a mean over (a whole batch's, when this is one block
      of its rows); None: this batch's
    """
    probs, targets, inside, Y = cache["probs"], cache["targets"], cache["inside"], cache["Y"]
    T, B, DH = Y.shape
    count = max(int(inside.sum()), 1) if count is None else count
    weight = inside.astype(probs.dtype)  # (T*B,): 1 on real tokens, 0 on padding
    d_logits = softmax_nll_backward(probs.copy(), targets, count, weight)  # (T*B, C)
    Y_flat = Y.reshape(T * B, DH)
    grads = {"head.weight": d_logits.T @ Y_flat, "head.bias": d_logits.sum(axis=0)}
    d_Y = (d_logits @ params["head.weight"]).reshape(T, B, DH)
    grads.update(classifier.stack_backward(params, d_Y, cache["stack"]))
    dtype = np.dtype(config.dtype)
    return {name: grads[name].astype(dtype, copy=False) for name in params}


def loss_and_grads(params, config, tokens, lengths, tags, dropout_rng=None, count=None):
    """forward + backward for one batch: (loss, grads), the loss a mean over its real tokens and the
    gradients of its sum over `count` tokens (None: this batch's; see backward)."""
    loss, _, cache = forward(params, config, tokens, lengths, tags, dropout_rng=dropout_rng)
    return loss, backward(params, config, cache, count)


def predict(params, config, ids, offsets, batch_size: int = 64, max_tokens: int = 32_768):
    """Tag probabilities of every token of every sequence, (N, C) back to back as `ids`, forward only.

    - ids, offsets: the sequences back to back (sequence i is ids[offsets[i]:offsets[i+1]]), each at
      least one token
    Sequences are batched in order of length, so that little is padding; a batch holds up to
    batch_size sequences and about max_tokens padded tokens. A sequence's tags never depend on
    the sequences batched beside it.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    probs = np.zeros((int(offsets[-1]) if n >= 0 else 0, config.classes), dtype=np.float64)
    lengths_all = np.diff(offsets)
    order = np.argsort(lengths_all, kind="stable")
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and stop - start < batch_size and (stop + 1 - start) * lengths_all[order[stop]] <= max_tokens:
            stop += 1
        rows = order[start:stop]
        tokens, lengths = classifier.batch(ids, offsets, rows)
        _, p, _ = forward(params, config, tokens, lengths, keep=False)  # (T, B, C)
        inside = _inside(lengths, p.shape[0])  # (T, B)
        t, b = np.nonzero(inside)
        probs[offsets[rows[b]] + t] = p[t, b]
        start = stop
    return probs


# ---------------------------------------------------------------- metrics

DENSE_CONFUSION_TAGS = classifier.DENSE_CONFUSION_LABELS


def is_bio(names) -> bool:
    """Whether tag names follow BIO / IOB2 (each is O, B-type or I-type), so that entities can be counted."""
    return bool(names) and all(n == "O" or (n[:2] in ("B-", "I-") and len(n) > 2) for n in names) \
        and any(n != "O" for n in names)


def entities(tags) -> list[tuple[str, int, int]]:
    """The entities of one sequence of BIO tag names, [(type, first, last)], as seqeval counts them
    by default (IOB2, not strict):

    - B-x starts an entity of type x;
    - I-x continues the entity before it when that one has type x; otherwise (after O, at the start,
      or after an entity of another type) it starts a new entity, as if it were B-x;
    - an entity ends before O, before B-, before an I- of another type, and at the end of the sequence.
    """
    found = []
    kind, first = None, 0  # the open entity's type (None: none open) and its first position
    for i, name in enumerate(tags):
        if name == "O":
            tag, type_ = "O", None
        else:
            tag, type_ = name[0], name[2:]
        if kind is not None and (tag != "I" or type_ != kind):
            found.append((kind, first, i - 1))
            kind = None
        if tag != "O" and kind is None:
            kind, first = type_, i
    if kind is not None:
        found.append((kind, first, len(tags) - 1))
    return found


def _prf(correct: int, predicted: int, true: int) -> dict:
    """Precision, recall and F1 with the convention 0/0 = 0 (sklearn's and seqeval's zero_division)."""
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def metrics(predicted, true, offsets, names, probs=None) -> dict:
    """Score predicted tags against true ones.

    - predicted, true: (N,) tag ids of many sequences back to back; offsets: (n + 1,) their bounds
    - names: the tag names, by id; probs: (N, C) the predicted probabilities, for the loss (or None)
    Returns {"lines", "tokens", "accuracy", "loss", "tags", "entities", "pairs", "confusion"}:
    - lines: how many sequences were scored (each one line of lines mode), tokens: how many tokens;
    - tags: one row per tag, in id order: {"tag", "precision", "recall", "f1", "support"} (token level);
    - entities: None unless every tag is BIO (`is_bio`), else {"precision", "recall", "f1", "true",
      "predicted", "correct", "types": [{"type", "precision", "recall", "f1", "support"}, ...]}: an
      entity is right only when its type and both ends are (seqeval's micro average);
    - pairs: the confusion matrix's non-zero cells [true id, predicted id, tokens]; confusion: the
      dense matrix (confusion[i][j] counts tokens of tag i predicted as j) for at most
      DENSE_CONFUSION_TAGS tags, else None; loss: the mean NLL per token (nan without probs).
    """
    predicted = np.asarray(predicted, dtype=np.int64)
    true = np.asarray(true, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    C, N = len(names), int(true.size)
    if predicted.shape != true.shape or (N and int(offsets[-1]) != N):
        raise ConfigError("predicted and true tags must be (N,) arrays over the same sequences")
    cells, counts = np.unique(true * C + predicted, return_counts=True)
    tp = np.bincount(true[true == predicted], minlength=C)
    support = np.bincount(true, minlength=C)
    claimed = np.bincount(predicted, minlength=C)
    rows = [{"tag": names[c], **_prf(int(tp[c]), int(claimed[c]), int(support[c])), "support": int(support[c])}
            for c in range(C)]
    confusion = None
    if C <= DENSE_CONFUSION_TAGS:
        dense = np.zeros(C * C, dtype=np.int64)
        dense[cells] = counts
        confusion = dense.reshape(C, C).tolist()
    loss = mean_nll(probs, true) if probs is not None else float("nan")
    return {"lines": int(len(offsets) - 1), "tokens": N,
            "accuracy": float(tp.sum() / N) if N else float("nan"), "loss": loss, "tags": rows,
            "entities": _entity_scores(predicted, true, offsets, names) if is_bio(names) else None,
            "pairs": [[int(c // C), int(c % C), int(k)] for c, k in zip(cells, counts)], "confusion": confusion}


def _entity_scores(predicted, true, offsets, names) -> dict:
    kinds: dict[str, list[int]] = {}  # type -> [correct, predicted, true]
    for i in range(len(offsets) - 1):
        a, b = int(offsets[i]), int(offsets[i + 1])
        want = set(entities([names[t] for t in true[a:b]]))
        got = set(entities([names[t] for t in predicted[a:b]]))
        for kind, *_ in want | got:
            kinds.setdefault(kind, [0, 0, 0])
        for entity in got:
            kinds[entity[0]][1] += 1
            kinds[entity[0]][0] += entity in want
        for entity in want:
            kinds[entity[0]][2] += 1
    correct, claimed, total = (sum(k[j] for k in kinds.values()) for j in range(3))
    return {**_prf(correct, claimed, total), "true": total, "predicted": claimed, "correct": correct,
            "types": [{"type": kind, **_prf(*kinds[kind]), "support": kinds[kind][2]} for kind in sorted(kinds)]}
