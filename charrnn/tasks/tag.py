"""The tagging task: one tag per token (many-to-many, equal lengths), the course notes' named-entity example.

Its examples are tagged sequences (files/tagged.py): JSON Lines `{"tokens": [...], "tags": [...]}` or CoNLL
columns `token<TAB>tag`, read in lines mode at char or word level. Each sequence is one example, its tokens
given to the run as a token list (one id per token: at word level a token is one vocabulary entry, never
split at its punctuation), its tags stored as (n_tokens,) tag ids beside the token ids (train_tags.npy,
val_tags.npy), their names, sorted, in tags.json and in every model file. The model is core/tagger.py's: the
classifier's recurrent stack (any cell, one or two directions) and a head at every step; the loss is the mean
NLL per real token. `charrnn tag` writes each sequence's tokens, tags and the tags' probabilities;
`charrnn eval` gives token accuracy, each tag's precision, recall and F1, the entities of BIO tags counted as
seqeval counts them, and the confusion matrix.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ..core import classifier, loss, tagger
from ..data.vocab import UNK
from ..errors import CharRNNError, CheckpointError, ConfigError, CorpusError, option
from ..files import atomic, corpus, tagged
from ..files.layout import DATA_DIR
from ..step import distributed, parallel
from .base import Batch, CommandOption, Task, TaskData, confusion_lines, summed_over_ranks
from .lm import heldout_lines

TAGS_FILE = "tags.json"  # in DATA_DIR: the tag names in id order
TAG_BLOCK_TOKENS = 1 << 16  # `charrnn tag` tags this many tokens at a time (their probabilities: C floats each)


@dataclass
class Tags(TaskData):
    """A tagger run's tags: their names in id order, and each split's (n_tokens,) tag ids."""
    tags: tuple = ()
    train: np.ndarray | None = None
    val: np.ndarray | None = None

    @property
    def names(self) -> tuple:
        return self.tags

    @property
    def arrays(self):
        return (self.train, self.val)


@dataclass(frozen=True)
class Tagged:
    """One tagged sequence: its tokens, their most likely tags, and each chosen tag's probability."""
    tokens: list
    tags: list
    probs: list

    def as_json(self) -> str:
        """One JSON Lines object, {"tokens", "tags", "probs"} (probabilities to 4 decimals): `charrnn tag`'s line.
        Every character that is not printable (controls, bidirectional overrides, a lone surrogate) is a JSON
        escape, so that the line is safe on a terminal and reads back as it was."""
        text = json.dumps({"tokens": self.tokens, "tags": self.tags,
                           "probs": [round(p, 4) if math.isfinite(p) else None for p in self.probs]},
                          ensure_ascii=False)
        return text if text.isprintable() else "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)

    def as_conll(self, escape=str) -> str:
        """CoNLL columns, token<TAB>tag<TAB>probability a line, then a blank line; escape: what makes a token or
        tag safe to print (the command line's `shown`: a TAB or newline token as \\t or \\n, keeping the columns)."""
        return "".join(f"{escape(t)}\t{escape(g)}\t{p:.4f}\n"
                       for t, g, p in zip(self.tokens, self.tags, self.probs)) + "\n"


@dataclass
class TagScore:
    """The totals `annotate` reports of a tagged text: tokens and unknown tokens (no loss: no true tags)."""
    tokens: int
    unknown: int
    sequences: int


@dataclass
class TagAnnotation:
    """A tagger's view of a text for `annotate`: its sequences, each token's tag probabilities (N, C) back
    to back, the tag names; cut: characters of the text left out after max_chars; text_chars: shown."""
    sequences: list
    probs: np.ndarray
    tags: list
    level: str
    cut: int
    text_chars: int
    score: TagScore

    def records(self):
        """One JSON-ready dict per sequence: tokens, the most likely tags, and every tag's probability."""
        at = 0
        for tokens in self.sequences:
            p = self.probs[at:at + len(tokens)]
            at += len(tokens)
            yield {"tokens": list(tokens), "tags": [self.tags[j] for j in p.argmax(axis=1)],
                   "probs": [{t: float(x) for t, x in zip(self.tags, row)} for row in p]}

    def summary(self) -> str:
        n = self.score.sequences
        return f"{self.score.tokens:,} tokens in {n:,} sequence{'' if n == 1 else 's'}, tagged"


class Tagger(Task):
    """Tag each token (see the module's docstring)."""
    name = "tag"
    noun = "a tagger"
    summary = "a tagger of tokens (JSON Lines or CoNLL columns)"
    modes = ("lines",)  # unit and levels: the contract's (a token; char or word)
    model_options = ("bidirectional",)
    methods = ("tag", "evaluate", "annotate")
    command = "tag"
    command_options = (CommandOption("output_format", str, "jsonl", "One JSON object per sequence (tokens, tags, "
                                     "probs), or CoNLL columns (token, tag, probability).", flag="format",
                                     choices=("jsonl", "conll")),)
    files = ("train_tags.npy", "val_tags.npy", TAGS_FILE)

    # ------------------------------------------------------------ options

    def check(self, tconfig) -> None:
        if tconfig.mode != "lines":
            raise ConfigError(f"{option('task', 'tag')} reads one tagged sequence per example: it takes no "
                              f"{option('mode', 'stream')}")

    def check_request(self, *, builtin: bool, folder: bool, init_from: bool, options: dict) -> None:
        if builtin or folder:
            raise ConfigError(f"{option('task', 'tag')} needs a {option('corpus_file')} of tagged sequences "
                              f"(JSON Lines or CoNLL columns), not {'a built-in corpus' if builtin else 'a folder'}")
        if "pool" in options:
            raise ConfigError(f"{option('pool')} pools a classifier's outputs over a line; {option('task', 'tag')} "
                              "has a head at every step and pools nothing")
        super().check_request(builtin=builtin, folder=folder, init_from=init_from, options=options)

    # ------------------------------------------------------------ examples

    def check_text(self, text, which: str = "") -> None:
        """Nothing: a JSON line holds a sequence's tags beside its tokens; `tagged` bounds each sequence."""

    def read_lines(self, text, where: str, names=None, level: str = "char"):
        """(token lists, tag ids, tag names) of a tagged text: the tag ids an object array of one (n_tokens,)
        array per sequence (so that the held-out split takes them by sequence); names None: a training
        text, whose sorted tags are the names (at least 2); else a validation text's, mapped by them."""
        seqs = list(tagged.sequences(text.split("\n"), tagged.guess_format(_first_line(text)), level, where))
        if names is None:
            names = sorted({t for _, tags in seqs for t in tags})
            if len(names) < 2:
                raise CorpusError(f"{where}: a tagger needs at least 2 tags, found {len(names)}: {names[0]!r}")
        return [tokens for tokens, _ in seqs], tag_ids([tags for _, tags in seqs], names, where), tuple(names)

    def store(self, data_dir, names: tuple, targets: tuple) -> None:
        """Write the tag ids of the two splits, each back to back as its token ids, and the tag names."""
        for split, tags in zip(("train", "val"), targets):
            flat = np.concatenate(list(tags)) if len(tags) else np.empty(0, np.int64)
            corpus.save_ids(os.path.join(data_dir, f"{split}_tags.npy"), flat.astype(np.int64))
        text = json.dumps(list(names)).encode("utf-8")
        atomic.write_file(os.path.join(data_dir, TAGS_FILE), lambda f: f.write(text))

    def load(self, directory, offsets: tuple) -> Tags:
        path = os.path.join(directory, DATA_DIR, TAGS_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                names = json.load(f)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the run's tags {path}: {exc}") from None
        names = checked_tags(names, None, path)
        try:
            arrays = tuple(corpus.load_ids(os.path.join(directory, DATA_DIR, f"{s}_tags.npy")) for s in ("train", "val"))
        except Exception as exc:  # the data folder is part of the run: any failure is a broken run
            raise CheckpointError(f"cannot read the run's data in {directory}/{DATA_DIR}: {exc}") from None
        for tags, lines, split in zip(arrays, offsets, ("train", "val")):
            n = int(lines[-1]) if lines is not None and len(lines) else 0
            if tags.shape != (n,) or (tags.size and (tags.min() < 0 or tags.max() >= len(names))):
                raise CheckpointError(f"the run's data in {directory}/{DATA_DIR} is damaged: {split}_tags.npy "
                                      f"does not hold one tag id below {len(names)} per token")
        return Tags(tags=names, train=arrays[0], val=arrays[1])

    def model_fields(self, data: Tags | None = None) -> dict:
        return {"classes": 2 if data is None else len(data.tags)}

    def check_data(self, data: Tags, config, where: str) -> None:
        checked_tags(list(data.tags), config.classes, where)

    # ------------------------------------------------------------ training

    def batch(self, run, step: int) -> Batch:
        """Whole sequences: (tokens, tag ids, lengths), a fresh state each."""
        epoch, index = divmod(step, run.steps_per_epoch)
        rows = run.data.epoch_order(run, epoch)[index]
        tokens, lengths = classifier.batch(run.train_ids, run.train_offsets, rows)
        tags, _ = classifier.batch(run.data.train, run.train_offsets, rows)  # (B, T), padded with tag 0
        return Batch(tokens, tags, lengths, True)

    def loss_and_grads(self, run, batch: Batch, state, rngs, group=distributed.Solo()):
        """The batch's sequences in tconfig.threads row blocks (parallel.py), each block's gradient that of its
        summed NLL over the whole batch's real tokens, so that the blocks add in block order; under MPI this
        rank takes only its sequences (group.rows), and the ranks' sums add in rank order. The loss is per
        token."""
        tokens, tags, lengths = batch.inputs, batch.targets, batch.mask
        count = int(lengths.sum())  # the whole batch's real tokens
        if group.size > 1:
            rows = group.rows(lengths.size)
            tokens, tags, lengths = tokens[rows], tags[rows], lengths[rows]
            if lengths.size == 0:  # a short last batch can leave a rank no sequences: it adds zeros
                zeros = {k: np.zeros_like(v) for k, v in run.params.items()}
                return summed_over_ranks(run.params, group, 0.0, zeros, count) + (None, count)
        blocks = parallel.row_blocks(lengths.size, run.tconfig.threads)

        def block(p):
            rows = blocks[p]
            loss, grads = tagger.loss_and_grads(run.params, run.config, tokens[rows], lengths[rows], tags[rows],
                                                dropout_rng=None if rngs is None else rngs[p], count=count)
            return loss * int(lengths[rows].sum()), grads

        results = parallel.run_blocks(block, len(blocks))
        nll, grads = results[0]
        for other_nll, other_grads in results[1:]:
            nll += other_nll
            for name, g in other_grads.items():
                grads[name] += g
        if group.size > 1:
            return summed_over_ranks(run.params, group, nll, grads, count) + (None, count)
        return nll / count, grads, None, count

    def validation_loss(self, run) -> float:
        """Mean NLL per token on the held-out sequences (whole sequences up to eval_tokens tokens)."""
        offsets = heldout_lines(run.val_offsets, run.tconfig.eval_tokens)
        if offsets is None:
            return math.nan
        probs = tagger.predict(run.params, run.config, run.val_ids, offsets)
        return loss.mean_nll(probs, run.data.val[: int(offsets[-1])])

    # ------------------------------------------------------------ the model file

    def metadata(self, run) -> dict:
        return {"tags": list(run.data.tags)}

    def check_metadata(self, meta: dict, config, where: str) -> None:
        meta["tags"] = list(checked_tags(meta.get("tags"), config.classes, where))

    def labels(self, meta: dict) -> list:
        return list(meta.get("tags", []))

    # ------------------------------------------------------------ what the front ends say of it

    def count_unit(self, level: str) -> str:
        return "char" if level == "char" else "token"

    def outputs(self, config) -> tuple:
        return config.classes, "tags"

    def model_summary(self, config) -> str:
        return f", {'bidirectional ' if config.bidirectional else ''}tagger over {config.classes} tags"

    def model_details(self, config, meta: dict) -> str:
        return (f", {'bidirectional ' if config.bidirectional else ''}tagger over {config.classes} tags "
                f"({', '.join(meta['tags'][:8])}{' ...' if config.classes > 8 else ''})")

    def data_line(self, data: dict) -> str:
        return "tagged sequences (JSON Lines or CoNLL columns)"

    def torch_options(self, config) -> dict:
        return {"bidirectional": True} if config.bidirectional else {}

    def next_line(self, c: str) -> str:
        return f"charrnn tag FILE {c} (tag each token), charrnn eval {c} (accuracy and F1 on the held-out sequences)"

    eval_methods = ("evaluate", "evaluate_file")

    def eval_lines(self, result: dict, source: str, unit: str, shown) -> list:
        """The figures, each tag's precision, recall and F1 (and each entity type's, for BIO tags), then the
        confusion matrix as a table, or (too many tags for one) its most frequent mistakes."""
        lines = [f"{shown(source)}: {result['lines']:,} sequences, {result['tokens']:,} tokens",
                 f"token accuracy  {result['accuracy']:.4f}",
                 f"loss            {result['loss']:.4f} nats/{unit}"]
        e = result["entities"]
        if e is not None:
            lines.append(f"entities        precision {e['precision']:.4f}  recall {e['recall']:.4f}  F1 {e['f1']:.4f}  "
                         f"({e['correct']:,} right of {e['predicted']:,} found, {e['true']:,} true)")
        rows = [(shown(r["tag"]), r) for r in result["tags"]]
        rows += [(f"{shown(t['type'])} (entity)", t) for t in (e["types"] if e else [])]
        width = max(len(name) for name, _ in rows)
        lines.append(f"{'':>{width}}  precision  recall      F1    support")
        lines += [f"{name:>{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:9,}"
                  for name, r in rows]
        names = [shown(n) for n in result["labels"]]
        return lines + confusion_lines(names, result, "tag", tagger.DENSE_CONFUSION_TAGS)

    # ------------------------------------------------------------ a trained model's own commands

    def command_lines(self, model, path, errors: str, encoding, shown, output_format: str = "jsonl"):
        """Tag each token of TEXT_FILE (or stdin, "-") with a trained tagger.

        Reads plain lines (their characters at char level, their words at word
        level) or JSON Lines with "tokens" (its own output reads back); blank
        lines are skipped. Writes one JSON object per sequence with its tokens,
        their tags and each tag's probability, or with --format conll a
        token<TAB>tag<TAB>probability line per token and a blank line after each
        sequence. Tokens the model never saw count as unknown.

        \b
        Examples:
          charrnn tag sentences.txt -c checkpoints/ner
          echo "Harry met Hermione" | charrnn tag --format conll
        """
        for result in model.tag_file(path, errors, encoding):
            yield result.as_json() + "\n" if output_format == "jsonl" else result.as_conll(shown)

    def tag(self, params, config, vocab, names, sequences) -> list[Tagged]:
        """Each token list's most likely tags and their probabilities (a token the vocabulary lacks is UNK)."""
        ids, offsets = corpus.encode_lines(vocab, sequences)
        if len(sequences) and np.diff(offsets).min() < 1:
            raise ConfigError("every sequence to tag needs at least one token")
        probs = tagger.predict(params, config, ids, offsets)
        best = probs.argmax(axis=1)
        chosen = probs[np.arange(best.size), best]
        return [Tagged(list(tokens), [names[j] for j in best[a:b]], chosen[a:b].tolist())
                for tokens, a, b in zip(sequences, offsets[:-1].tolist(), offsets[1:].tolist())]

    def line_text(self, vocab, ids) -> str:
        return json.dumps({"tokens": [vocab.tokens[i] for i in np.asarray(ids).tolist()]}, ensure_ascii=False)

    def annotate(self, params, config, vocab, names, text: str, max_chars: int | None) -> TagAnnotation:
        """The sequences of a text (as `charrnn tag` reads them) up to max_chars characters of tokens, each
        token's tag probabilities, and how many characters are cut."""
        sequences, shown, cut = [], 0, 0
        for tokens in self.inputs(text, vocab.level, "the text"):
            chars = sum(map(len, tokens))
            if cut or (max_chars is not None and sequences and shown + chars > max_chars):
                cut += chars
                continue
            sequences.append(tokens)
            shown += chars
        ids, offsets = corpus.encode_lines(vocab, sequences)
        probs = tagger.predict(params, config, ids, offsets) if sequences else np.zeros((0, len(names)))
        score = TagScore(tokens=int(offsets[-1]), unknown=int(np.count_nonzero(np.asarray(ids) == UNK)),
                         sequences=len(sequences))
        return TagAnnotation(sequences, probs, list(names), vocab.level, cut, shown, score)

    @staticmethod
    def tokens_of(texts, level: str) -> list[list[str]]:
        """Sequences to tag as token lists: a string is its characters (char level) or its whitespace-split
        words (word level); a list is its tokens, each a non-empty string (one character at char level)."""
        out = []
        for i, text in enumerate(texts):
            if isinstance(text, str):
                tokens = list(text) if level == "char" else text.split()
            elif isinstance(text, (list, tuple)) and all(isinstance(t, str) and t for t in text):
                tokens = list(text)
                if level == "char" and any(len(t) != 1 for t in tokens):
                    raise ConfigError(f"sequence {i}: at char level each token is one character")
            else:
                raise ConfigError(f"sequence {i} must be a string or a list of non-empty strings, "
                                  f"got {type(text).__name__}")
            if not tokens:
                raise ConfigError(f"sequence {i} has no tokens to tag")
            out.append(tokens)
        return out

    @staticmethod
    def inputs(text: str, level: str, where: str):
        """The token lists `charrnn tag` reads from a text (tagged.inputs: plain lines or JSON Lines), an
        iterator (a malformed line's error comes when it is reached)."""
        return tagged.inputs(text.split("\n"), level, where)

    def tag_blocks(self, params, config, vocab, names, sequences, block_tokens: int = TAG_BLOCK_TOKENS):
        """tag() of an iterable of token lists, a block of about block_tokens tokens at a time: an iterator."""
        block, size = [], 0
        for tokens in sequences:
            block.append(tokens)
            size += len(tokens)
            if size >= block_tokens:
                yield from self.tag(params, config, vocab, names, block)
                block, size = [], 0
        if block:
            yield from self.tag(params, config, vocab, names, block)

    def evaluate(self, params, config, vocab, names, text: str, where: str) -> dict:
        """The metrics (tagger.metrics, plus "labels": the tag names) of a tagged text, JSON Lines or CoNLL."""
        seqs = list(tagged.sequences(text.split("\n"), tagged.guess_format(_first_line(text)), vocab.level, where))
        true = np.concatenate(list(tag_ids([tags for _, tags in seqs], names, where, known=True)))
        ids, offsets = corpus.encode_lines(vocab, [tokens for tokens, _ in seqs])
        return self._metrics(params, config, names, ids, offsets, true)

    def evaluate_heldout(self, params, config, names, ids, offsets, directory, model_file) -> dict:
        """The metrics of a run's stored held-out sequences (ids, offsets) and their stored tag ids."""
        path = os.path.join(directory, DATA_DIR, "val_tags.npy")
        if not os.path.exists(path):
            raise ConfigError(f"{model_file} has no stored held-out tags beside it; pass a tagged FILE")
        try:
            true = corpus.load_ids(path)
        except CharRNNError as exc:
            raise CheckpointError(f"the held-out tags stored beside {model_file} are damaged: {exc}") from None
        if true.shape != (int(offsets[-1]),) or (true.size and (true.min() < 0 or true.max() >= len(names))):
            raise CheckpointError(f"{path}: not one tag id below {len(names)} per held-out token")
        return self._metrics(params, config, names, ids, offsets, true)

    @staticmethod
    def _metrics(params, config, names, ids, offsets, true) -> dict:
        probs = tagger.predict(params, config, ids, offsets)
        return {**tagger.metrics(probs.argmax(axis=1), true, offsets, list(names), probs), "labels": list(names)}




def _first_line(text: str) -> str:
    """The first non-blank line of a text (which tells JSON Lines from CoNLL columns), or ""."""
    for line in text.split("\n"):
        if line.strip():
            return line
    return ""


def tag_ids(tag_lists, names, where: str, known: bool = False) -> np.ndarray:
    """An object array of one (n,) int64 array of tag ids per sequence; CorpusError for a tag not in names
    (known: the names are a trained model's tags)."""
    index = {name: i for i, name in enumerate(names)}
    out = np.empty(len(tag_lists), dtype=object)
    for i, tags in enumerate(tag_lists):
        try:
            out[i] = np.array([index[t] for t in tags], dtype=np.int64)
        except KeyError as exc:
            raise CorpusError(f"{where}: the tag {exc.args[0]!r} is not one of {'the model' if known else 'the training text'}"
                              f"'s tags ({', '.join(map(repr, list(names)[:10]))})") from None
    return out


def checked_tags(names, n: int | None, where: str) -> tuple:
    """names as a tuple, once they are a list of n (None: at least 2) distinct non-empty tag names; else
    CheckpointError."""
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(x, str) and x for x in names)
            and len(set(names)) == len(names) and (n is None or len(names) == n)):
        raise CheckpointError(f"{where}: the tags must be a list of {n or 'at least 2'} distinct names")
    return tuple(names)
