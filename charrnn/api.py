"""The Python API: `charrnn.load` a trained model and use it; `charrnn.train` a new one.

    import charrnn
    model = charrnn.load("checkpoints/shakespeare")   # a run directory or a model file
    text = model.generate(prime="ROMEO:", length=300, temperature=0.8, seed=1)
    s = model.score("To be, or not to be")           # .loss, .perplexity, .bits_per_token, .tokens, .unknown
    run = charrnn.train("corpus.txt", out="checkpoints/x", max_time="2m", hidden=128)

The command line is a thin layer over these functions (cli.py only parses,
prints and exits), so `charrnn sample --seed 1` and `generate(seed=1)` give the
same text, and an error here is the library's own exception type carrying the
message the CLI prints. Nothing here prints.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from typing import NamedTuple

from .files import corpora, corpus, layout, textfile
from .step import distributed, runtime
from .work import evaluate, report, sampling
from .runs import models, prepare, rundir, runlog
from .runs.request import TrainingRequest
from .tasks import registry as tasks
from .work import loop as training
from .files.config import (AUTO_MODEL_KEYS, DEFAULTS, SCHEDULE_KEYS, TrainConfig, check_integer, check_seed,
                           count_tokens, fill_auto_settings, parse_duration)
from .errors import CharRNNError, ConfigError, CorpusError, option
from .core.model import ModelConfig, fast_precision
from .data.vocab import WORD_PATTERN
from .work.evaluate import Score, json_safe
from .tasks.lm import mostly_unseen

# What the command line shares with the library, so that it writes what the library reads and says:
# parse_duration ("1m30s" -> 90.0) and format_duration (90.0 -> "1m30s"), json_safe (non-finite numbers as
# None, for JSON), input_name ("standard input" for "-")
format_duration = report.format_duration
input_name = corpus.input_name




class Model:
    """A trained model loaded from a checkpoint, ready to sample, score and annotate.

    - path: the model file it came from (a run directory means its best.safetensors)
    - config: its ModelConfig; vocab: its Vocab; meta: the file's metadata
    - lines: True when it was trained on lines (one example per line)
    - encoding: the text encoding of its training files (UTF-8 unless it was trained with another):
      score_file and read_text read files in it unless told otherwise
    """

    def __init__(self, params, config, vocab, meta, path):
        self.params, self.config, self.vocab, self.meta, self.path = params, config, vocab, meta, path
        self.task = tasks.of_model(config, meta, path)  # what it was trained for (charrnn/tasks/)
        self.lines = meta.get("data", {}).get("mode") == "lines"
        self.encoding = corpus.text_encoding(meta.get("data", {}).get("encoding", corpus.DEFAULT_ENCODING))

    def __repr__(self):
        c = self.config
        return f"<charrnn.Model {c.cell} {c.layers}x{c.hidden}, {self.vocab.size} tokens, from {self.path}>"

    @property
    def training(self) -> dict:
        """What the checkpoint says about its training: step, epoch, best_val_loss, ... (may be empty)."""
        return dict(self.meta.get("training", {}))

    def describe(self) -> list[tuple[str, str]]:
        """What `charrnn info` prints about this model, as (label, text) rows in order: architecture,
        parameters, whether it loads into torch.nn, vocabulary, a preview of its tokens, data, training
        (for a trained file), the model it was fine-tuned from, its file and run directory. The texts
        quote the file's tokens, labels and paths as they are (escape them before a terminal shows them)."""
        return report.describe(self.params, self.config, self.vocab, self.meta, self.path, self.task)

    @property
    def data_dir(self) -> str:
        """The folder of the run's stored splits (data/ in the run directory; a snapshot's run is the folder
        above it), whether or not it exists (a model file copied out of its run has none)."""
        return prepare.data_dir(models.run_of(self.path))

    # ---------------------------------------------------------------- sampling

    def novelty(self) -> Novelty:
        """How new this model's samples are (`charrnn sample --novelty`): a Novelty over the training text
        stored in its run, its index built now or read where an earlier call stored it (stream mode; a
        lines model indexes its training and validation lines). ConfigError when the run stores no
        training data beside the model (a model file copied out of its run)."""
        self._need("sample", "generates no text")
        index, built = models.novelty_index(self.path, self.lines)
        return Novelty(self, index, built)

    def session(self, prime: str = "", temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, seed: int | None = None) -> Session:
        """A text written together with the model (`charrnn sample --interactive`): a Session that starts
        from the prime, offers the likeliest next tokens, takes the user's text or picks, and lets the
        model write with these sampling options. The prime is checked first, then the options."""
        self._need("sample", "generates no text")
        rng = np.random.default_rng(check_seed(seed, True))
        state = sampling.Session(self.params, self.config, self.vocab, self.lines, prime, rng)
        sampling.check_options(temperature, top_k, top_p, 1, 1)
        return Session(state, temperature, top_k, top_p)


    def stream(self, prime: str = "", length: int = 500, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop=()):
        """Generate one sample, yielding its text piece by piece as it is made (the prime is not yielded):
        a Sample, whose `ended` says why it ended once it is read to its end.

        - prime: text to continue; length: the most tokens; temperature, top_k, top_p: see `charrnn sample`
        - seed: for a reproducible sample (None: random)
        - stop: strings that end the sample where its continuation first holds one (included)
        Options and the prime are checked at this call, before anything is generated.
        """
        stop = _stop_strings(stop)
        rng = np.random.default_rng(check_seed(seed, True))
        steps = self._steps(1, prime, length, temperature, top_k, top_p, rng)
        return Sample(self._first_pieces(steps), stop)

    def generate(self, prime: str = "", length: int = 500, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop=()) -> str:
        """One sample: the prime followed by its continuation, as `charrnn sample` prints it (without the last newline)."""
        return prime + "".join(self.stream(prime, length, temperature, top_k, top_p, seed, stop))

    def samples(self, n: int, prime: str = "", length: int = 500, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                stop=()) -> list[str]:
        """n samples generated together as one batch (as `charrnn sample -n N`), each prime + continuation."""
        return [prime + "".join(pieces)
                for pieces in self.sample_stream(n, prime, length, temperature, top_k, top_p, seed, stop)]

    def sample_stream(self, n: int, prime: str = "", length: int = 500, temperature: float = 1.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      stop=()):
        """Generate n samples and yield them in order, each a Sample: an iterator of its text's pieces (the
        continuation, without the prime) that says, once read to its end, why it ended (Sample.ended);
        read each before asking for the next. What `charrnn sample` runs.

        - stop: strings that end a sample where its continuation first holds one (the string included);
          the sample is a prefix of the one generated without them

        The samples are generated together, in groups of sampling.group_size streams: a group's first
        sample is yielded as it is made, its others once it ends (kept meanwhile in blocks, on disk beyond
        one), so memory does not grow with n or length. Options and the prime are checked at this call.
        """
        self._need("sample", "generates no text")
        sampling.check_options(temperature, top_k, top_p, length, n)
        stop = _stop_strings(stop)
        rng = np.random.default_rng(check_seed(seed, True))
        group = sampling.group_size(n, self.config.vocab_size, self.config.gates * self.config.hidden)
        first = self._steps(min(group, n), prime, length, temperature, top_k, top_p, rng)  # checks the prime now
        return self._samples(first, n, group, (prime, length, temperature, top_k, top_p, rng), stop)

    def _samples(self, steps, n: int, group: int, options, stop=()):
        made = 0
        while made < n:
            k = min(group, n - made)
            if steps is None:
                steps = self._steps(k, *options)
            kept = sampling.KeptTokens(k, self.vocab.dtype, options[1])
            try:
                recorded = kept.recording(steps)
                first = Sample(self._first_pieces(recorded), stop)
                yield first
                if k > 1 or made + k < n:
                    # the group runs to its end (a caller may stop reading early, or the sample at a stop
                    # string): its other samples, and the draws of the groups after it, need every step
                    for _ in recorded:
                        pass
                for i in range(1, k):
                    yield Sample(self._kept_pieces(kept.stream(i)), stop)
            finally:
                kept.close()
            made, steps = made + k, None

    def _kept_pieces(self, blocks, piece: int = 1 << 16):
        """The text of a kept sample's tokens (arrays in order), up to its EOS, a piece at a time; returns
        why it ended ("eos" or "length")."""
        eos = self.vocab.eos
        for tokens in blocks:
            ends = np.flatnonzero(tokens == eos)
            tokens = tokens[: ends[0]] if ends.size else tokens
            for i in range(0, tokens.size, piece):
                yield self.vocab.decode(tokens[i : i + piece])
            if ends.size:
                return "eos"
        return "length"

    def _steps(self, n, prime, length, temperature, top_k, top_p, rng):
        self._need("sample", "generates no text")
        # generate checks the options and the prime now, before anything is generated
        return sampling.generate(self.params, self.config, self.vocab, rng=rng,
                                 num_samples=n, length=length, temperature=temperature, top_k=top_k,
                                 top_p=top_p, prime=prime, lines=self.lines)

    def _first_pieces(self, steps):
        """The text of stream 0 of generate's steps, a token at a time; returns why it ended ("eos" or
        "length"). It reads every step, so that the group's other streams are recorded to their end."""
        eos, texts, ended = self.vocab.eos, {}, "length"
        for tokens, alive in steps:
            token = int(tokens[0])
            if alive[0]:
                if token == eos:
                    ended = "eos"
                    continue
                text = texts.get(token)
                if text is None:
                    text = texts[token] = self.vocab.decode([token])  # each token id decoded once
                yield text
        return ended

    # ---------------------------------------------------------------- scoring

    def score(self, text: str | None = None, *, name: str = "the text") -> Score:
        """Score a text as `charrnn eval FILE` does (None: the held-out split stored in the run).

        - name: what an error message calls the text (the CLI passes the file's name)

        Returns a Score: .loss (nats per token), .perplexity, .bits_per_token, .tokens, .unknown.
        CorpusError when there is nothing to score (fewer than two tokens).
        """
        self._need("score", "scores labels, not text: use evaluate()")
        text, name = _text(text, "text", optional=True), _text(name, "name")
        if text is None:
            ids, offsets = models.load_heldout(self.path, self.lines)
            score = evaluate.score_ids(self.params, self.config, self.vocab, ids, offsets)
            source = f"the held-out split ({self.data_dir})"
        else:
            score = evaluate.score_text(self.params, self.config, self.vocab, corpus.normalize_newlines(text),
                                        self.lines)
            source = name
        if score.tokens == 0:
            raise CorpusError(f"nothing to score in {source}: it needs at least two tokens")
        return score

    def mostly_unseen(self, score: Score) -> bool:
        """Whether so many of a score's tokens are unknown to the model that its figures say little about the
        text (`charrnn eval` then warns): more than lm.UNKNOWN_SHARE of them, and more than lm.UNKNOWN_TRAINED times
        the share of <unk> in the model's training tokens (rare words made <unk> by min_count: a model that
        learned <unk> from them about as often as the text holds it scores such tokens as it learned to)."""
        return mostly_unseen(score.unknown, score.tokens, self.meta)

    def score_file(self, path, errors: str = "strict", encoding: str | None = None) -> Score:
        """score(the file's text), read and scored in chunks, so memory does not grow with the file
        (`charrnn eval FILE`); errors: "strict" or "replace" for invalid bytes; encoding: the file's
        (None: the model's, self.encoding)."""
        self._need("score", "scores labels, not text: use evaluate()")
        score = evaluate.score_file(self.params, self.config, self.vocab, path, self.lines, errors,
                                    encoding=encoding or self.encoding)
        if score.tokens == 0:
            raise CorpusError(f"nothing to score in {corpus.input_name(path)}: it needs at least two tokens")
        return score

    def read_text(self, path, errors: str = "strict", encoding: str | None = None, *,
                  limit: int | None = None) -> str:
        """The text of a file (or "-", standard input) as corpus.read_text reads it, in `encoding` (None: the
        model's, self.encoding); limit: read at most this many bytes."""
        return corpus.read_text(path, errors, limit=limit, encoding=encoding or self.encoding)

    def read_lines(self, path, errors: str = "strict", encoding: str | None = None) -> list[str]:
        """The non-blank lines of a file, or of standard input ("-", which may be empty), as
        `charrnn classify` labels them; read in `encoding` (None: the model's)."""
        encoding = encoding or self.encoding
        raw = corpus.read_stdin(errors, encoding) if os.fspath(path) == corpus.STDIN else \
            self.read_text(path, errors, encoding)
        return corpus.split_lines(raw)

    def heldout_text(self) -> str:
        """The run's held-out split as text (a lines model's lines each end with a newline)."""
        ids, offsets = models.load_heldout(self.path, self.lines)
        if offsets is None:
            return self.vocab.decode(np.asarray(ids))
        return "".join(self.task.line_text(self.vocab, np.asarray(ids[a:b])) + "\n"
                       for a, b in zip(offsets[:-1], offsets[1:]))

    def heldout_start(self, max_chars: int | None) -> tuple[str, int]:
        """The first max_chars characters (or a little more) of heldout_text(), decoding no more of the
        split than that, and how many characters the whole split holds. None: all of it."""
        ids, offsets = models.load_heldout(self.path, self.lines)
        ids = np.asarray(ids)
        lengths = np.array([len(self.vocab.decode(np.array([i]))) for i in range(self.vocab.size)], np.int64)
        if offsets is None:
            total = int(lengths[ids].sum()) if len(ids) else 0
            # each token is at least one character, except those that decode to nothing
            end = len(ids) if max_chars is None else int(np.searchsorted(np.cumsum(lengths[ids]), max_chars)) + 1
            return self.vocab.decode(ids[:end]), total
        before = np.concatenate([[0], np.cumsum(lengths[ids])])  # characters before each token
        offsets = np.asarray(offsets)
        line_chars = before[offsets[1:]] - before[offsets[:-1]] + 1  # each line and its newline
        total = int(line_chars.sum())
        end = len(line_chars) if max_chars is None else int(np.searchsorted(np.cumsum(line_chars), max_chars)) + 1
        return "".join(self.task.line_text(self.vocab, ids[a:b]) + "\n"
                       for a, b in zip(offsets[:end], offsets[1 : end + 1])), total

    def annotate(self, text: str, top_k: int = 5, max_chars: int | None = 5_000):
        """Per-token probabilities, ranks, top-k guesses, hidden states and gates of a text.

        - top_k: guesses kept per token; max_chars: cut the text there (None: no limit)
        Returns an annotate.Annotation: iterate it for one Row per scored token (.token, .prob,
        .surprisal, .bits, .rank, .top, .unknown); .score holds the totals. See charrnn/work/annotate.py.
        """
        from .work import annotate

        self._need("annotate", "predicts no characters to annotate")
        own = self.task.annotate(self.params, self.config, self.vocab, self.labels, _text(text, "text"), max_chars)
        if own is not None:  # a task with its own view of a text (a tagger's tags)
            return own
        return annotate.annotate(self, _text(text, "text"), top_k=top_k, max_chars=max_chars)


    def annotate_input(self, path=None, top_k: int = 5, max_chars: int | None = 5_000, errors: str = "strict",
                       encoding: str | None = None) -> tuple:
        """annotate() of the start of a file ("-": standard input) or, for None, of the run's held-out split,
        as `charrnn annotate` does: only the max_chars characters shown are read or decoded, and the rest
        is counted where it can be (the Annotation's `cut` then counts the whole input's characters left out).

        Returns (Annotation, source, counted): source names the input in messages; counted is False where
        the rest could not be counted (a pipe, an encoding not read in chunks, a rest that does not decode),
        and `cut` then counts only what was read beyond max_chars."""
        self._need("annotate", "predicts no characters to annotate")
        rest = None  # how many characters are cut, where only the start of the input was read
        shown = max_chars if isinstance(max_chars, int) and not isinstance(max_chars, bool) and max_chars >= 1 \
            else None
        if path is not None:
            # only what is shown is read: max_chars characters are at most 4 bytes each, after a BOM
            encoding = corpus.text_encoding(encoding or self.encoding)
            limit = 4 * shown + 8 if shown is not None else None
            text, source = self.read_text(path, errors, encoding, limit=limit), corpus.input_name(path)
            if limit is not None and len(text) > shown:
                rest = _characters_after(path, errors, shown, encoding)
        else:
            # only the start that is shown is decoded; the rest is counted
            text, held_chars = self.heldout_start(shown)
            source = "the held-out split"
            if shown is not None and held_chars > shown:
                rest = held_chars - shown
        ann = self.annotate(text, top_k=top_k, max_chars=max_chars)
        if rest is not None:
            ann.cut = rest  # only the start was read: the page's notice counts the whole input
        return ann, source, rest is not None or path is None

    def write_page(self, ann, path: str | None = None, source: str = "the text") -> str:
        """Write an annotation (from annotate or annotate_input) as one self-contained HTML page, atomically;
        path None: annotate.html beside the model file. Returns the page's path."""
        from .work import annotate, page

        path = _path(path, "path") or os.path.join(os.path.dirname(os.path.abspath(self.path)), "annotate.html")
        c = self.config
        model_line = (f"{c.cell.upper()} {c.layers} x {c.hidden}, {self.vocab.size} {self.vocab.level} tokens, "
                      f"{'lines' if self.lines else 'stream'} mode")
        labels = dict(title=f"What the model saw in {os.path.basename(source)}", model_line=model_line,
                      checkpoint=self.path, source=source)
        if isinstance(ann, annotate.Annotation):
            page.write(path, ann, **labels)
        else:  # a task's own view (Task.annotate): a tagger's tags
            page.write_tags(path, ann.sequences, ann.probs, ann.tags, level=ann.level, cut=ann.cut, **labels)
        return path

    # ---------------------------------------------------------------- classifiers (train with task="classify")

    @property
    def labels(self) -> list[str]:
        """A classifier's label names, in id order (empty for a language model)."""
        return self.task.labels(self.meta)

    def classify(self, texts, top_k: int | None = None) -> list[list[tuple[str, float]]]:
        """Label texts with a classifier: for each text, (label, probability) pairs, most likely first.

        - texts: a list of strings (or one string), each at least one character; characters the
          model never saw count as unknown
        - top_k: pairs kept per text (None: every label)
        """
        self._need("classify", "has no labels; train one with {task}")
        if top_k is not None:
            top_k = check_integer(top_k, "top_k", low=1)
        if isinstance(texts, str):
            texts = [texts]
        try:
            texts = [_text(t, "each text") for t in texts]  # any iterable of strings
        except TypeError:
            raise ConfigError(f"texts must be a string or a list of strings, got {type(texts).__name__}") from None
        return self.task.classify(self.params, self.config, self.vocab, self.labels, texts, top_k)

    def evaluate(self, text: str | None = None, *, name: str = "the text") -> dict:
        """A classifier's accuracy, macro-F1, loss (nats per line) and confusion matrix, as `charrnn eval`.

        - text: label<TAB>text lines (None: the held-out lines stored in the run)
        Returns {"lines", "accuracy", "macro_f1", "loss", "pairs", "confusion", "labels"}: pairs lists the
        confusion matrix's non-zero cells [true id, predicted id, lines]; confusion[i][j] counts lines of
        label i predicted as j, for up to classifier.DENSE_CONFUSION_LABELS labels (None above: it would
        hold C x C numbers). ConfigError when there is nothing to score.
        A tagger's (text: JSON Lines or CoNLL columns) are core/tagger.metrics' figures: lines (sequences),
        tokens, accuracy (per token), loss (nats per token), tags (each tag's precision, recall, F1 and
        support), entities (for BIO tags, counted as seqeval counts them; else None), pairs, confusion, labels.
        """
        self._need("evaluate", "has no labels; use score()")
        text, name = _text(text, "text", optional=True), _text(name, "name")
        if text is None:
            heldout = models.load_heldout(self.path, True)
            result = self.task.evaluate_heldout(self.params, self.config, self.labels, *heldout,
                                                models.run_of(self.path), self.path)
            source = f"the held-out split ({self.data_dir})"
        else:
            result = self.task.evaluate(self.params, self.config, self.vocab, self.labels,
                                        corpus.normalize_newlines(text), name)
            source = name
        if result["lines"] == 0:
            raise ConfigError(f"nothing to score in {source}: it holds no labelled lines")
        return result

    def evaluate_file(self, path, errors: str = "strict", encoding: str | None = None) -> dict:
        """evaluate() of a file's label<TAB>text lines (or "-", standard input), read in `encoding` (None: the
        model's)."""
        return self.evaluate(self.read_text(path, errors, encoding), name=path)

    # ---------------------------------------------------------------- taggers (train with task="tag")

    def tag(self, texts) -> list:
        """Tag sequences with a tagger: for each, a Tagged with .tokens, .tags (the most likely tag of each
        token) and .probs (that tag's probability); .as_json() and .as_conll() give `charrnn tag`'s lines.

        - texts: a list of sequences (or one string): a string is its characters (char level) or its
          whitespace-split words (word level); a list holds the tokens themselves. Tokens the model never
          saw count as unknown.
        """
        self._need("tag", "tags no tokens; train one with {task}")
        if isinstance(texts, str):
            texts = [texts]
        try:
            texts = list(texts)
        except TypeError:
            raise ConfigError(f"texts must be a string or a list, got {type(texts).__name__}") from None
        return self.task.tag(self.params, self.config, self.vocab, self.labels,
                             self.task.tokens_of(texts, self.vocab.level))

    def tag_file(self, path, errors: str = "strict", encoding: str | None = None):
        """tag() of a file's (or standard input's, "-") sequences as `charrnn tag` reads them: plain lines
        (characters or whitespace-split words) or JSON Lines with "tokens" (its own output reads back);
        blank lines are skipped. An iterator of Tagged, tagged a block of sequences at a time, so that the
        tags' probabilities of a long file are never all held at once."""
        self._need("tag", "tags no tokens; train one with {task}")
        encoding = encoding or self.encoding
        raw = corpus.read_stdin(errors, encoding) if os.fspath(path) == corpus.STDIN else \
            self.read_text(path, errors, encoding)
        sequences = self.task.inputs(corpus.normalize_newlines(raw), self.vocab.level, corpus.input_name(path))
        return self.task.tag_blocks(self.params, self.config, self.vocab, self.labels, sequences)

    # ---------------------------------------------------------------- any task

    def run_command(self, command: str, path="-", errors: str = "strict", encoding: str | None = None,
                    shown=str, **options):
        """The lines a task's own command prints (`charrnn classify`: tasks.Task.command_lines), for the
        input at path ("-": standard input) read with errors and encoding (None: the model's); shown: how a
        name read from the model file is escaped for the screen; options: the command's own (top_k).
        ConfigError for a command no task has, and from the command when this model cannot run it."""
        task = tasks.commanding(command)
        return task.command_lines(self, path, errors, encoding, shown, **options)

    def metrics(self, path=None, errors: str = "strict", encoding: str | None = None) -> tuple[dict, str]:
        """What `charrnn eval` reports, for the model's task: (its metrics as a dict, the name of what was
        scored): of the file at path (or "-"), or (None) of the held-out split stored in the run. A language
        model's are Score.as_dict()'s, a classifier's evaluate()'s."""
        heldout, of_file = self.task.eval_methods
        if path is None:
            value = getattr(self, heldout)()
            source = f"held-out split ({prepare.data_dir(models.run_of(self.path))})"
        else:
            value = getattr(self, of_file)(path, errors, encoding)
            source = corpus.input_name(path)
        return self.task.eval_result(value), source

    def _need(self, method: str, why: str) -> None:
        """ConfigError unless this model's task offers `method` (Task.methods): why says what the model
        cannot do, {task} in it standing for the name of the task that can."""
        if method not in self.task.methods:
            other = tasks.offering(method)
            hint = f"; use `charrnn {self.task.command}`" if why == "generates no text" else ""
            raise ConfigError(f"this model is {self.task.noun}, not {other.noun}: it "
                              f"{why.format(task=option('task', other.name))}{hint}")


def load(path: str | None = None) -> Model:
    """Load a trained model: a run directory (its best.safetensors), a model file, or None for the newest run.

    The same file that `charrnn sample` and `charrnn eval` pick (models.find_checkpoint).
    Raises CheckpointError when there is none or it is damaged.
    """
    params, config, vocab, meta, model_file = models.load_checkpoint(_path(path, "path"))
    return Model(params, config, vocab, meta, model_file)


def _characters_after(path, errors: str, shown: int, encoding: str = "utf-8") -> int | None:
    """How many characters of a file follow its first `shown`, counted in chunks (None: a pipe or device,
    which cannot be read again, a file in an encoding not read in chunks, or one whose rest does not decode)."""
    if not textfile.chunked(path, encoding):
        return None
    try:
        pieces = textfile.text_pieces(textfile.open_text(path, errors, 1 << 16, encoding=encoding), "char")
        return sum(map(len, pieces)) - shown
    except CharRNNError:
        return None


def annotation_records(ann, states: bool = False):
    """The rows of an Annotation as JSON-ready dicts, one per scored token (`charrnn annotate --json`):
    token, id, logprob, prob, bits, rank, top_k, unknown, end, and with states every layer's h, tanh(c)
    and gates after the token (None before the first step). Non-finite numbers are None."""
    from .work import annotate

    if not isinstance(ann, annotate.Annotation):  # a task's own view (Task.annotate): its records
        if states:
            raise ConfigError(f"{option('states')} shows a language model's states; this model has none to show")
        yield from map(json_safe, ann.records())
        return
    # the states are computed again a chunk of steps at a time, in step order, as the rows need them
    each_step, at = (ann.each_step_states() if states else None), -1
    for row in ann:
        record = {"token": row.token, "id": row.id, "logprob": row.logprob, "prob": row.prob,
                  "bits": row.bits, "rank": row.rank, "top_k": [[t, p] for t, p in row.top],
                  "unknown": row.unknown, "end": row.end}
        if states:
            step = int(ann.piece_step[row.piece])
            while at < step:  # steps only go forward from row to row
                layers, at = next(each_step), at + 1
            record["states"] = None if step < 0 else [
                {key: (value.tolist() if key != "gates" else {g: v.tolist() for g, v in value.items()})
                 for key, value in layer.items()} for layer in layers]
        yield json_safe(record)


class Novelty:
    """How new a model's samples are, against the training text stored in its run (Model.novelty()).

    - lines: the model was trained on lines; then `copied` tells whether a line copies a stored one, else
      `longest` finds a sample's longest stretch in the training text
    - tokens: stream mode, the training tokens indexed; built: the index was built by this call
    - kept_in: the folder the index is stored in (the run's data/)
    """

    def __init__(self, model: Model, index, built: bool):
        self._vocab, self._index, self.lines, self.built = model.vocab, index, model.lines, built
        self.tokens = None if model.lines else index.n
        self.kept_in = model.data_dir
        self.unit = "characters" if model.vocab.level == "char" else "tokens"

    def copied(self, line: str) -> str | None:
        """Lines mode: "train" or "validation" when the line (the prime and a sample's text) is one of the
        run's stored lines of that split, else None."""
        train, val = self._index
        ids = self._vocab.encode(line)
        return "train" if ids in train else "validation" if val is not None and ids in val else None

    def longest(self, text: str) -> tuple[int, int, str]:
        """Stream mode: the longest stretch of text found verbatim in the training text, as (its tokens,
        the text's tokens, the stretch itself)."""
        ids = self._vocab.encode(text)
        length, start = self._index.longest_match(ids)
        return length, len(ids), self._vocab.decode(ids[start : start + length])


class Choice(NamedTuple):
    """A next token a Session offers: its id, its text, whether it ends the text, its probability."""
    id: int
    text: str
    end: bool
    prob: float


class Session:
    """A text written together with the model (Model.session()): `text` so far; `choices(n)` offers the
    likeliest next tokens; `pick` one, `type` text, or let the model `write` tokens."""

    def __init__(self, state, temperature, top_k, top_p):
        self._state, self._options = state, (temperature, top_k, top_p)

    @property
    def text(self) -> str:
        return self._state.text

    def choices(self, n: int) -> list[Choice]:
        """The n likeliest next tokens under the model (at temperature 1), likeliest first."""
        vocab = self._state.vocab
        return [Choice(t, "" if t == vocab.eos else vocab.decode([t]), t == vocab.eos, p)
                for t, p in self._state.top(n)]

    def pick(self, choice: Choice) -> None:
        """Add an offered token to the text (an end token ends nothing here: the caller ends the text)."""
        self._state.add([choice.id])

    def type(self, text: str) -> None:
        """Add text as it is; VocabError naming a token the model has never seen (nothing is added)."""
        self._state.add(sampling.encode_prime(self._state.vocab, _text(text, "text")))

    def write(self, n: int) -> tuple[int, bool]:
        """Let the model write up to n tokens; returns (tokens written, whether it stopped at its end token)."""
        return self._state.write(check_integer(n, "n", low=1), *self._options)


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   length: int = 500, n: int = 1) -> None:
    """ConfigError for sampling options no sample could use, as Model.sample_stream checks them (a caller
    that starts several, one after the other, checks them all before the first)."""
    sampling.check_options(temperature, top_k, top_p, length, n)


def builtin_corpora() -> list[dict]:
    """The built-in corpora (`charrnn corpora`), each {"name", "mode", "description", "characters",
    "files", "lines"} (files: a folder-like corpus's file count, lines: a lines corpus's; else None).
    Each is built to be counted."""
    return [corpora.describe(name) for name in corpora.names()]


def plot(path: str | None = None, out: str | None = None) -> str:
    """Draw a run's training and validation loss curves to a PNG (`charrnn plot`; needs matplotlib).

    - path: a run directory, or a model file in one (None: the newest run under checkpoints/)
    - out: the PNG (None: loss.png in the run directory)
    Returns the path written."""
    path, out = _path(path, "path"), _path(out, "out")
    if path is None:
        run_dir = os.path.dirname(models.find_checkpoint(None))
    elif not os.path.isdir(path):  # a model file: its run directory
        run_dir = os.path.dirname(os.path.abspath(path))
    else:
        run_dir = path
    records = runlog.read_log(os.path.join(run_dir, layout.LOG_FILE))
    out = out or os.path.join(run_dir, layout.PLOT_FILE)
    report.plot_losses(records, out, title=os.path.basename(os.path.abspath(run_dir)))
    return out


# ---------------------------------------------------------------- the process (the command line's)


def prepare_process() -> None:
    """What a program that runs charrnn's commands does once at its start: keep glibc from returning freed
    memory to the system every step (runtime.keep_freed_memory; it changes no number, only speed)."""
    runtime.keep_freed_memory()


def mpi_rank() -> int:
    """This process's rank under `mpiexec -n N` (0 in a plain process); the first call joins the MPI world."""
    return distributed.world().rank


def under_mpi() -> bool:
    """Whether this process has joined an MPI world of more than itself (then a failing rank must leave at
    once: see distributed.py)."""
    return distributed.active()


def error_once(text: str, say) -> None:
    """Tell this process's error text through say(text): all of it, except under MPI where an error that
    every rank hits is told by rank 0 alone (distributed.MPIGroup.error_once; it waits a few seconds to know)."""
    (distributed.world() if distributed.active() else distributed.Solo()).error_once(text, say)


def _stop_strings(stop) -> tuple:
    """The stop strings of sample_stream: a str or an iterable of non-empty strs."""
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    for s in stop:
        if not isinstance(s, str) or not s:
            raise ConfigError(f"a stop string must be non-empty text, got {s!r:.40}")
    return stop


class Sample:
    """One sample's text as it is made: iterate it for the pieces of its continuation. Once it is read to
    its end, `ended` says why it ended: "eos" (the model's end-of-sequence token), "stop" (its text came to
    `stop_string`, which it ends with) or "length" (the length limit); None before then."""

    def __init__(self, pieces, stop=()):
        self.ended, self.stop_string = None, None
        self._it = self._run(pieces, tuple(stop))

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._it)

    def _run(self, pieces, stop):
        if not stop:
            self.ended = yield from pieces
            return
        keep = max(map(len, stop)) - 1  # the characters a stop string may still need from before a piece
        tail = ""
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                self.ended = end.value
                return
            window = tail + piece
            found = [(window.find(s) + len(s), s) for s in stop if s in window]
            if found:  # the earliest end: a stop string ending in an earlier window would have stopped it there
                end, self.stop_string = min(found)
                if end > len(tail):
                    yield piece[: end - len(tail)]
                self.ended = "stop"
                return
            yield piece
            tail = window[-keep:] if keep else ""
# ---------------------------------------------------------------- the arguments' types
# The API's arguments are checked as they come in, so that a wrong type is a ConfigError naming the
# argument (exit 2 on the command line), never a TypeError from deep inside.


def _path(value, name: str, optional: bool = True):
    """A path argument: a str or an os.PathLike naming a str (None where optional); returned as a str."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a path (a str or a pathlib.Path), got {type(value).__name__}")
    if "\0" in value or not value:
        raise ConfigError(f"{name} {value!r:.60} is not a usable path")
    return value


def _text(value, name: str, optional: bool = False):
    """A text argument: a str (None where optional)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _optional(value, name: str, kind, what: str):
    """None, or a value of type `kind` (described as `what` in the error)."""
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def _function(value, name: str):
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be a function (or None), got {type(value).__name__}")
    return value


# ---------------------------------------------------------------- training

def train(corpus_file: str | None = None, out: str | None = None, *, resume: str | None = None,
          val: str | None = None, errors: str | None = None, lock: bool = True, on_event=None,
          should_stop=None, builtin: str | None = None, glob: str | None = None, init_from: str | None = None,
          extend_vocab: bool = False, **options) -> str:
    """Train a model (or continue one) and return its run directory.

    - corpus_file: a UTF-8 text file or a folder of them (textfile.open_folder); None trains on a
      built-in corpus: `builtin` (a name of corpora.CORPORA), by default python-reference
    - glob: with a folder, only the files whose names match (such as "*.py")
    - init_from: fine-tune: start from this trained model (a run directory or a model file), with its
      architecture and vocabulary; extend_vocab: add the new text's unseen tokens to that vocabulary
    - out: the run directory (None: checkpoints/<corpus name>, made fresh)
    - resume: continue this run exactly where it stopped (then only budgets and cadence may be given, and
      lr, schedule or warmup: a new learning-rate schedule from the current step, the run's values for those
      not given)
    - val: a separate validation text file; errors: "strict" (the default) or "replace" for invalid UTF-8
      (or invalid bytes in the encoding given by the option encoding, such as "latin-1": any text codec
      Python knows; the model records it, and Model.score_file reads files in it)
    - lock: hold the run's lock while writing it (see runlock.py)
    - on_event: called with (event dict, Run or None) for every training event and for each
      {"event": "message", "text": ...} worth telling a user; should_stop: a function polled
      between steps (True: save and stop)
    - options: any `charrnn train` option by its Python name: max_time ("2m", "90s" or seconds),
      max_steps, max_epochs, hidden, layers, cell, lr, batch_size, seq_len, mode, ... Those not
      given take the defaults of config.DEFAULTS (constants.TRAIN_DEFAULTS; the command line shows the same),
      where the model size, batch and schedule fit the data.
    Without any budget a fresh run trains for 5 minutes.

    Under `mpiexec -n N` every rank calls this alike (see distributed.py): rank 0 prepares,
    locks and writes the run; the others train in step with it and write nothing.
    """
    paths = {name: _path(value, name) for name, value in (
        ("corpus_file", corpus_file), ("out", out), ("resume", resume), ("val", val), ("init_from", init_from))}
    for value, name in ((builtin, "builtin"), (glob, "glob"), (errors, "errors")):
        _optional(value, name, str, "a str")
    for value, name in ((lock, "lock"), (extend_vocab, "extend_vocab")):
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{name} must be True or False, got {type(value).__name__}")
    emit = _function(on_event, "on_event") or (lambda event, run: None)
    stop = _function(should_stop, "should_stop") or (lambda: False)
    request = TrainingRequest.check(**paths, errors=errors, builtin=builtin, glob=glob,
                                    extend_vocab=bool(extend_vocab), options=dict(options))
    group = distributed.world()
    if request.resume is not None:
        if group.rank != 0:
            return _follow(group, request.overrides(), emit, stop)
        return _resume(request, lock, emit, stop, group)
    if group.rank != 0:
        return _follow(group, None, emit, stop)  # a fresh run: rank 0 saves its step-0 state, every option applied
    return _start(request, lock, emit, stop, group)


def _resume(request: TrainingRequest, lock: bool, emit, stop, group) -> str:
    """Rank 0 of a resumed run: clean it up, tell the other ranks, train."""
    directory = request.resume
    with rundir.writing(directory, create=False, lock=lock):
        run = rundir.resume_run(directory, request.overrides())
        _check_ranks(run.tconfig, group)
        group.broadcast_text(directory)  # the other ranks read the run once it is cleaned up
        emit({"event": "message", "text": f"Resuming {directory} at step {run.step}"}, run)
        if any(key in request.options for key in SCHEDULE_KEYS):
            emit({"event": "message", "text": _new_schedule_line(run)}, run)
        elif run.reaimed_lr is not None:
            tc = run.tconfig
            emit({"event": "message", "text": f"The budget changed: the learning rate goes on from "
                  f"{run.reaimed_lr:.3g} and its cosine decay now ends, at {tc.lr * tc.min_lr_ratio:.3g}, "
                  f"with the new budget."}, run)
        _train_events(run, emit, stop, group)
    return directory


def _start(request: TrainingRequest, lock: bool, emit, stop, group) -> str:
    """Rank 0 of a fresh run: read the corpus, choose the settings left open, start the run, train."""
    init = request.fine_tune(*models.load_checkpoint(request.init_from)) if request.init_from else None
    tconfig, model_options = request.tconfig, request.model
    say = lambda text, run=None: emit({"event": "message", "text": text}, run)  # noqa: E731
    text, val_text, name = _corpus(request, tconfig, say)
    if not request.given_budget:
        say(f"No budget given: training for 5 minutes (set {option('max_time')}, {option('max_steps')} or "
            f"{option('max_epochs')}).")
    chosen = _settings_line(text, val_text, tconfig, model_options, group.size)
    _check_ranks(tconfig, group)
    directory = request.out or rundir.fresh_run_dir(name)
    with rundir.writing(directory, create=True, made=request.out is None, lock=lock):
        run = rundir.start_run(directory, text, val_text, model_options, tconfig, init,
                               where=(request.corpus_file or "the built-in corpus", request.val))
        if chosen:
            say(chosen, run)
        if run.origin is not None:
            say(_origin_line(run), run)
        del text, val_text  # training reads only the memory-mapped ids from here on
        runtime.release_freed_memory()
        if group.size > 1:
            # the other ranks start from this step-0 state, exactly as a resumed run would
            rundir.save_checkpoint(run)
            group.broadcast_text(directory)
        _train_events(run, emit, stop, group)
    return directory


def _corpus(request: TrainingRequest, tconfig: TrainConfig, say):
    """(the training text, the validation text or None, the corpus's name for a fresh run directory): a
    built-in corpus, a folder's Documents (its validation files held out) or a file (_read)."""
    errors = request.errors or DEFAULTS["errors"]
    corpus_file, val = request.corpus_file, request.val
    if corpus_file is None:
        name = request.builtin or corpora.DEFAULT
        text = corpora.build(name)
        if request.builtin is None:
            say("No corpus given: training on the Python language reference bundled with your Python.")
        else:
            say(f"Built-in corpus {name}: {corpora.CORPORA[name].description}, "
                f"{textfile.characters(text):,} characters.")
    elif os.path.isdir(corpus_file):
        text = textfile.open_folder(corpus_file, request.glob, errors, tconfig.encoding)
        name = os.path.basename(os.path.normpath(os.path.abspath(corpus_file)))
        say(_folder_line(corpus_file, text))
        text = request.task.read_folder(text) or text  # a task that reads a folder its own way (a classifier's labels)
    else:
        text, name = _read(corpus_file, errors, tconfig), os.path.splitext(os.path.basename(corpus_file))[0]
    val_text = _read(val, errors, tconfig, validation=True) if val else None
    if tconfig.mode == "lines":  # a text in memory (a task's own reader): before its lines are split into tokens (the settings count them)
        request.task.check_text(text)
        request.task.check_text(val_text, "validation ")
    if isinstance(text, textfile.Folder):
        split = textfile.split_folder(text, tconfig) if val_text is None else (text.whole, val_text, None)
        if split is None:
            say(f"Validation: a random {tconfig.val_frac:.0%} of the lines ({len(text.names)} files are too few "
                f"to hold out whole ones)")
            text = text.whole
        else:
            text, val_text, how = split
            if how:
                say(f"Validation: {how}")
    for part in (text, val_text):  # pass 1 now (the settings read its counts); _read's is done
        if isinstance(part, textfile.TextFile):
            textfile.scan(part, tconfig.level, tconfig.mode)
    return text, val_text, name


def _read(path: str, errors: str, tconfig: TrainConfig, validation: bool = False):
    """A corpus file: a textfile.TextFile scanned once (preparation then reads it in chunks, so memory does
    not grow with its size; a pipe, such as /dev/stdin, or a UTF-16 file is spooled to a temporary file
    first: textfile.open_source), its lines the task's (Task.line_parser: a classifier's label<TAB>text), or
    its text where a task's examples are read whole (Task.chunked False)."""
    task = tasks.get(tconfig.task)
    if not task.chunked:
        return corpus.read_text(path, errors, encoding=tconfig.encoding)
    text = textfile.open_source(path, errors, encoding=tconfig.encoding)
    text.parse = task.line_parser(validation)
    textfile.scan(text, tconfig.level, tconfig.mode)  # pass 1 now: invalid bytes are reported where they are
    return text


def _folder_line(root, docs) -> str:
    """What was read from a folder: files, characters, and the files skipped."""
    line = f"Corpus folder {root}: {len(docs.names):,} text files, {len(docs):,} characters"
    if docs.skipped:
        shown = ", ".join(docs.skipped[:5]) + (", ..." if len(docs.skipped) > 5 else "")
        line += f"; skipped {len(docs.skipped)} binary or undecodable: {shown}"
    if docs.empty:
        line += f"; skipped {docs.empty} empty"
    return line


def _shown_tokens(tokens, limit: int = 30) -> str:
    shown = " ".join(repr(t) for t in tokens[:limit])
    return shown + (" ..." if len(tokens) > limit else "")


def _origin_line(run) -> str:
    """The vocabulary policy of a fine-tuned run, in words."""
    o = run.origin
    start = f"Fine-tuning {o['model_file']}" + (f" (trained {o['step']:,} steps)" if o.get("step") else "")
    if o["vocab"] == "extended":
        added = o["added"]
        vocab = (f"vocabulary extended from {o['base_tokens']} to {run.vocab.size} tokens: {len(added)} new "
                 f"(ids {o['base_tokens']}-{run.vocab.size - 1}): {_shown_tokens(added)}" if added else
                 f"vocabulary kept ({o['base_tokens']} tokens): the new text has no unseen characters")
    else:
        vocab = f"vocabulary kept ({o['base_tokens']} tokens)"
        if o["n_unseen"]:
            vocab += (f"; {o['unk_tokens']:,} tokens of the new text become UNK, {o['n_unseen']} characters the "
                      f"model never saw: {_shown_tokens(o['unseen'])} ({option('extend_vocab')} learns them)")
        else:
            vocab += ": every character of the new text is in it"
    if o["vocab"] == "extended" and o["unk_tokens"]:
        vocab += f"; {o['unk_tokens']:,} tokens still UNK (validation-only or rarer than {option('min_count')})"
    return f"{start}; {vocab}"


def _train_events(run, emit, stop, group=None) -> None:
    for event in training.train(run, should_stop=stop, group=group):
        emit(event, run)
    if group is not None:
        # no rank leaves before rank 0 has saved: mpiexec ends the whole job when one rank exits non-zero
        group.barrier()


def _check_ranks(tconfig, group) -> None:
    """ConfigError unless the MPI ranks divide the global batch (each owns batch_size / N streams)."""
    if tconfig.batch_size % group.size:
        raise ConfigError(f"{option('batch_size', tconfig.batch_size)} must be a multiple of the {group.size} MPI ranks "
                          f"(mpiexec -n); the batch is split between them by streams")


def _new_schedule_line(run) -> str:
    """What a resume that starts a new learning-rate schedule says about it."""
    tc, ended = run.tconfig, run.schedules[-1]
    shape = (f"cosine decay to {tc.lr * tc.min_lr_ratio:.3g} at the end of the budget" if tc.schedule == "cosine"
             else "constant")
    warm = f" after {tc.warmup:,} steps of warm-up" if tc.warmup else ""
    return (f"A new learning-rate schedule from step {run.step:,}: {tc.lr:.3g}{warm}, {shape} (it replaces "
            f"{ended['schedule']} {ended['lr']:.3g} from step {ended['step']:,}; the run records both).")


def _follow(group, overrides, emit, stop) -> str:
    """An MPI rank other than 0: train in step with rank 0 on the run it prepared, writing nothing.

    Rank 0 broadcasts the run directory once it is ready (a fresh run's step-0 state is
    saved, a resumed run's files cleaned up); this rank reads it with the same overrides
    rank 0 took from the same arguments.
    """
    directory = group.broadcast_text(None)
    run = rundir.resume_run(directory, overrides, writer=False)
    _train_events(run, emit, stop, group)
    return directory


def _shape(text, tconfig: TrainConfig) -> tuple[int, float | None]:
    """(the vocabulary size the text gives, lines mode's mean tokens a line with its end token, else None)."""
    level = tconfig.level
    if isinstance(text, textfile.TextFile):  # the same numbers, from the scan
        scan = textfile.scan(text, level, tconfig.mode)
        distinct, line_length = scan.distinct, None
        if scan.n_lines:
            line_length = (scan.line_tokens + scan.n_lines - 1) / scan.n_lines + 1
    else:
        distinct = len(set(text)) if level == "char" else len(set(WORD_PATTERN.findall(text)))  # as the scan
        lines = corpus.split_lines(text) if tconfig.mode == "lines" else None
        line_length = count_tokens("\n".join(lines), level) / len(lines) + 1 if lines else None  # + the end token
    vocab_size = distinct + 3 if level == "char" else min(distinct, tconfig.max_vocab or 1 << 62) + 3
    return max(vocab_size, 4), line_length


def _measure(model_options: dict, tconfig: TrainConfig, vocab_size: int, line_length: float | None) -> float | None:
    """Tokens per second of training steps for these settings and the text's shape (_shape; see
    train.measure_speed). A bidirectional stack runs every layer twice: half the speed of the
    one-directional model measured."""
    both = bool(model_options.get("bidirectional"))
    try:
        config = ModelConfig(vocab_size=vocab_size, **{**model_options, "bidirectional": False})
    except ConfigError:
        return None  # a bad option: start_run reports it
    return training.measure_speed(config, tconfig, line_length) / (2 if both else 1)


def _settings_line(text, val_text, tconfig, model_options, ranks: int = 1) -> str | None:
    """Choose the model size, dropout and schedule the user left open (a batch the MPI ranks divide);
    returns a line saying what."""
    shape = functools.cache(lambda: _shape(text, tconfig))  # once a run, and only under a time budget

    def measure(options, tc):
        return _measure(options, tc, *shape())
    chosen = fill_auto_settings(text, val_text, tconfig, model_options, measure=measure, ranks=ranks,
                                vocab_size=shape()[0] if tconfig.max_time is not None else None,
                                precision=lambda: fast_precision() if tasks.get(tconfig.task).bf16 else "float32")
    if chosen is None:
        return None
    values = ", ".join(f"{k} {model_options[k] if k in AUTO_MODEL_KEYS else getattr(tconfig, k)}"
                       for k in chosen["keys"])
    unit = "characters" if tconfig.level == "char" else "word-level tokens"
    if chosen["speed"] is None:
        basis = "from the budget"
    else:
        basis = f"at {chosen['speed']:,.0f} tokens/s, {'measured' if chosen['speed_measured'] else 'nominal'}"
    unit = unit[:-1] if chosen["n_tokens"] == 1 else unit
    return (f"Settings for {chosen['n_tokens']:,} {unit} and about {chosen['passes']:,.1f} passes over them "
            f"({basis}): {values} (set them to override)")
