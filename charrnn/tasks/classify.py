"""The classifier task: one label per line (many-to-one).

Its examples are `label<TAB>text` lines (corpus.LabelledLines, the corpus engine's line parser), read in lines mode at character level; the
label names, sorted, are stored in the run's data folder (labels.json) and in its model files, and each
split's (n_lines,) label ids beside its token ids (train_labels.npy, val_labels.npy). Its model is
classifier.py's: the recurrent stack (one or two directions), pooling over time (--pool) and a head over the
labels; its loss is the mean NLL per line, and its metrics accuracy, macro-F1, loss and the confusion matrix.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ..core import classifier
from ..errors import CharRNNError, CheckpointError, ConfigError, CorpusError, option
from ..files import corpus, textfile
from ..files.layout import DATA_DIR, LABELS_FILE
from ..files.modelmeta import checked_labels
from ..step import distributed, parallel
from .base import Batch, CommandOption, Task, TaskData, confusion_lines, summed_over_ranks
from .lm import heldout_lines  # a classifier scores the same share of the held-out lines as a language model


@dataclass
class Labels(TaskData):
    """A classifier run's labels: their names in id order, and each split's (n_lines,) label ids."""
    labels: tuple = ()
    train: np.ndarray | None = None
    val: np.ndarray | None = None

    @property
    def names(self) -> tuple:
        return self.labels

    @property
    def arrays(self):
        return (self.train, self.val)


class Classifier(Task):
    """Label each line (see the module's docstring)."""
    name = "classify"
    noun = "a classifier"
    summary = "a classifier of label<TAB>text lines"
    unit = "line"
    modes = ("lines",)
    levels = ("char",)
    model_options = ("bidirectional", "pool")
    methods = ("classify", "evaluate")
    command = "classify"
    chunked = True
    command_options = (CommandOption("top_k", int, 1, "Labels printed per line, most likely first."),)
    files = ("train_labels.npy", "val_labels.npy", LABELS_FILE)

    # ------------------------------------------------------------ options

    def check(self, tconfig) -> None:
        if tconfig.mode != "lines" or tconfig.level != "char":
            raise ConfigError(f"{option('task', 'classify')} reads one example per line at character level: it "
                              f"takes neither {option('mode', 'stream')} nor {option('level', 'word')}")

    def check_request(self, *, builtin: bool, folder: bool, init_from: bool, options: dict) -> None:
        if builtin:
            raise ConfigError(f"{option('task', 'classify')} needs a {option('corpus_file')} of label<TAB>text "
                              "lines; a built-in corpus has no labels")
        super().check_request(builtin=builtin, folder=folder, init_from=init_from, options=options)

    # ------------------------------------------------------------ examples

    def read_folder(self, folder):
        """A folder with one subfolder per label: every non-blank line of every file under LABEL/ is one
        example of LABEL, as the line LABEL<TAB>line of a labelled file (files in folder_files' order). The
        lines are spooled as such a file (one file's text in memory at a time) for the corpus engine."""
        def lines():
            with open(folder.whole.path, "rb") as f:
                for name, (start, stop) in zip(folder.names, folder.spans):
                    label, slash, _ = name.replace(os.sep, "/").partition("/")
                    if not slash:
                        raise CorpusError(f"{folder.root}: {name!r} is not in a subfolder; {option('task', 'classify')}"
                                          f" takes a folder with one subfolder per label, the files of each its examples")
                    if not label.strip() or any(c in label for c in "\t\r\n"):
                        raise CorpusError(f"{folder.root}: the subfolder name {label!r} cannot be a label")
                    f.seek(start)
                    for line in corpus.split_lines(f.read(stop - start).decode("utf-8")):
                        yield f"{label}\t{line}\n"
        text = textfile.spool_text(lines(), folder.root)
        text.parse = self.line_parser()
        return text

    def labelled(self) -> bool:
        return True

    def line_parser(self, validation: bool = False):
        """label<TAB>text (corpus.LabelledLines): the corpus engine stores each line's label id beside its
        tokens ({split}_labels.npy) and the sorted training labels (labels.json); a validation file needs one
        label, and only labels the training lines have."""
        return corpus.LabelledLines(1 if validation else 2)

    def load(self, directory, offsets: tuple) -> Labels:
        path = os.path.join(directory, DATA_DIR, LABELS_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                names = json.load(f)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the run's labels {path}: {exc}") from None
        names = checked_labels(names, None, path)
        classes = len(names)
        try:
            tags = tuple(corpus.load_ids(os.path.join(directory, DATA_DIR, f"{s}_labels.npy")) for s in ("train", "val"))
        except Exception as exc:  # the data folder is part of the run: any failure is a broken run
            raise CheckpointError(f"cannot read the run's data in {directory}/{DATA_DIR}: {exc}") from None
        for tag, lines, name in zip(tags, offsets, ("train", "val")):
            if tag.shape != (len(lines) - 1,) or (tag.size and (tag.min() < 0 or tag.max() >= classes)):
                raise CheckpointError(f"the run's data in {directory}/{DATA_DIR} is damaged: {name}_labels.npy "
                                      f"does not hold one label id below {classes} per line")
        return Labels(labels=names, train=tags[0], val=tags[1])

    def model_fields(self, data: Labels | None = None) -> dict:
        return {"classes": 2 if data is None else len(data.labels)}

    def check_data(self, data: Labels, config, where: str) -> None:
        checked_labels(list(data.labels), config.classes, where)

    # ------------------------------------------------------------ training

    def batch(self, run, step: int) -> Batch:
        """Whole lines: (tokens, label ids, lengths), a fresh state each."""
        epoch, index = divmod(step, run.steps_per_epoch)
        order = run.data.epoch_order(run, epoch)
        tokens, lengths = classifier.batch(run.train_ids, run.train_offsets, order[index])
        return Batch(tokens, run.data.train[order[index]], lengths, True)

    def loss_and_grads(self, run, batch: Batch, state, rngs, group=distributed.Solo()):
        """The batch's lines in tconfig.threads row blocks as parallel.py cuts them; the blocks' gradients
        (each of its summed loss over the whole batch's lines) add in block order. Under MPI this rank takes
        only its lines (group.rows), and the ranks' sums add in rank order. The loss is per line; the tokens
        counted are the lines' tokens."""
        tokens, labels, lengths = batch.inputs, batch.targets, batch.mask
        count, n_tokens = labels.size, int(lengths.sum())  # the whole batch's
        if group.size > 1:
            rows = group.rows(count)
            tokens, labels, lengths = tokens[rows], labels[rows], lengths[rows]
            if labels.size == 0:  # a short last batch can leave a rank no lines: it adds zeros
                zeros = {k: np.zeros_like(v) for k, v in run.params.items()}
                return summed_over_ranks(run.params, group, 0.0, zeros, count) + (None, n_tokens)
        blocks = parallel.row_blocks(labels.size, run.tconfig.threads)

        def block(p):
            rows = blocks[p]
            loss, grads = classifier.loss_and_grads(run.params, run.config, tokens[rows], lengths[rows], labels[rows],
                                                    dropout_rng=None if rngs is None else rngs[p], count=count)
            return loss * (rows.stop - rows.start), grads

        results = parallel.run_blocks(block, len(blocks))
        nll, grads = results[0]
        for other_nll, other_grads in results[1:]:
            nll += other_nll
            for name, g in other_grads.items():
                grads[name] += g
        if group.size > 1:
            return summed_over_ranks(run.params, group, nll, grads, count) + (None, n_tokens)
        return nll / count, grads, None, n_tokens

    def validation_loss(self, run) -> float:
        """Mean NLL per line on the held-out lines (whole lines up to eval_tokens tokens)."""
        offsets = heldout_lines(run.val_offsets, run.tconfig.eval_tokens)
        if offsets is None:
            return math.nan
        probs = classifier.predict(run.params, run.config, run.val_ids, offsets)
        return classifier.mean_nll(probs, run.data.val[: len(offsets) - 1])

    # ------------------------------------------------------------ the model file

    def metadata(self, run) -> dict:
        return {"labels": list(run.data.labels)}

    def check_metadata(self, meta: dict, config, where: str) -> None:
        meta["labels"] = list(checked_labels(meta.get("labels"), config.classes, where))

    def labels(self, meta: dict) -> list:
        return list(meta.get("labels", []))

    # ------------------------------------------------------------ what the front ends say of it

    def outputs(self, config) -> tuple:
        return config.classes, "labels"

    def model_summary(self, config) -> str:
        return f", classifier over {config.classes} labels"

    def model_details(self, config, meta: dict) -> str:
        return (f", {'bidirectional ' if config.bidirectional else ''}classifier over {config.classes} labels "
                f"({', '.join(meta['labels'][:8])}{' ...' if config.classes > 8 else ''}), {config.pool} pooling")

    def data_line(self, data: dict) -> str:
        return "label<TAB>text lines"

    def torch_options(self, config) -> dict:
        return {"bidirectional": True} if config.bidirectional else {}

    def next_line(self, c: str) -> str:
        return f"charrnn classify FILE {c} (label lines), charrnn eval {c} (accuracy on the held-out lines)"

    eval_methods = ("evaluate", "evaluate_file")

    def eval_lines(self, result: dict, source: str, unit: str, shown) -> list:
        """The figures, then the confusion matrix as a table, or (too many labels for one) its most frequent
        mistakes."""
        labels = [shown(name) for name in result["labels"]]
        lines = [f"{shown(source)}: {result['lines']:,} lines",
                 f"accuracy  {result['accuracy']:.4f}",
                 f"macro-F1  {result['macro_f1']:.4f}",
                 f"loss      {result['loss']:.4f} nats/line"]
        return lines + confusion_lines(labels, result, "label", classifier.DENSE_CONFUSION_LABELS)

    # ------------------------------------------------------------ a trained model's own commands

    def command_lines(self, model, path, errors: str, encoding, shown, top_k: int = 1):
        """Label each line of TEXT_FILE (or stdin, "-") with a trained classifier.

        Prints label<TAB>probability<TAB>text per line; with --top-k K, K
        label<TAB>probability pairs before the text, most likely first. Blank
        lines are skipped. Characters the model never saw count as unknown.

        \b
        Examples:
          charrnn classify lines.txt -c checkpoints/kinds
          echo "def f(x): return x" | charrnn classify --top-k 2
        """
        if top_k < 1:
            raise ConfigError(f"{option('top_k')} must be at least 1, got {top_k}")
        texts = model.read_lines(path, errors, encoding)
        ranked = model.classify(texts, top_k=top_k)
        for text, pairs in zip(texts, ranked):
            yield "\t".join(f"{shown(label)}\t{p:.4f}" for label, p in pairs) + f"\t{text}\n"

    def classify(self, params, config, vocab, labels, texts: list[str], top_k: int | None) -> list:
        """For each text, (label, probability) pairs, most likely first (top_k of them; None: all)."""
        probs = classify_texts(params, config, vocab, texts)
        k = len(labels) if top_k is None else min(top_k, len(labels))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(labels[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

    def evaluate(self, params, config, vocab, labels, text: str, where: str) -> dict:
        """The metrics of label<TAB>text lines (see score_labelled)."""
        return score_labelled(params, config, vocab, labels, text, where)

    def evaluate_heldout(self, params, config, labels, ids, offsets, directory, model_file) -> dict:
        """The metrics of a run's stored held-out lines (ids, offsets) and their stored label ids, read from
        the run's directory (the one model_file belongs to)."""
        tags = self.heldout_labels(directory, model_file, config.classes)
        if tags.size != len(offsets) - 1:  # a damaged run: exit 1, as for any damaged file
            raise CheckpointError(f"the held-out split beside {model_file} has {len(offsets) - 1} lines but "
                                  f"{tags.size} labels")
        return score_heldout_labelled(params, config, labels, ids, offsets, tags)

    @staticmethod
    def heldout_labels(directory, model_file: str, classes: int) -> np.ndarray:
        """(n_lines,) label ids of the stored validation lines in directory, checked."""
        path = os.path.join(directory, DATA_DIR, "val_labels.npy")
        if not os.path.exists(path):
            raise ConfigError(f"{model_file} has no stored held-out labels beside it; pass a labelled FILE")
        try:
            tags = corpus.load_ids(path)
        except CharRNNError as exc:
            raise CheckpointError(f"the held-out labels stored beside {model_file} are damaged: {exc}") from None
        if tags.ndim != 1 or (tags.size and (tags.min() < 0 or tags.max() >= classes)):
            raise CheckpointError(f"{path}: not one label id below {classes} per line")
        return tags




# ---------------------------------------------------------------- scoring a trained classifier


def classify_texts(params, config, vocab, texts: list[str]) -> np.ndarray:
    """Label probabilities (n, C) of each text (each at least one character), forward only."""
    ids, offsets = corpus.encode_lines(vocab, texts)
    if len(texts) and np.diff(offsets).min() < 1:
        raise ConfigError("every text to classify needs at least one token")
    return classifier.predict(params, config, ids, offsets)


def score_labelled(params, config, vocab, label_names, text: str, where: str) -> dict:
    """A classifier's accuracy, macro-F1, loss and confusion matrix on `label<TAB>text` lines.

    - label_names: the model's labels in id order; where: the text's name, for errors
    Returns classifier.metrics' dict plus "labels" (the names, the confusion matrix's order).
    """
    names, texts = corpus.split_labelled(text, where, min_labels=1)
    tags = corpus.label_ids(names, list(label_names), where)
    probs = classify_texts(params, config, vocab, texts)
    return {**classifier.metrics(probs, tags, config.classes), "labels": list(label_names)}


def score_heldout_labelled(params, config, label_names, ids, offsets, tags) -> dict:
    """score_labelled on encoded lines (a run's stored validation split): ids, offsets, (n,) label ids."""
    probs = classifier.predict(params, config, ids, offsets)
    return {**classifier.metrics(probs, tags, config.classes), "labels": list(label_names)}
