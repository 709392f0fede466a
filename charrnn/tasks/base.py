"""The task contract: what differs between a language model, a classifier and every task to come.

A task is one module in this folder with one class that subclasses `Task`, and one line in
`tasks/registry.py` that registers an instance under its name (the `--task` option's value). The layers
above (the run code in runs/, the loop and scoring in work/, api.py and cli.py) hold no task's name and read
no task's fields: they ask the run's task (`run.task`, `registry.get(name)`, `registry.of_model(config, meta, where)`).

What a task decides, and the method that says it:

- its options: which modes and levels it reads (`modes`, `levels`; a single mode is its default), which
  model options only it has (`model_options`: the classifier's pool and bidirectional), and the checks of a
  training request (`check`, `check_request`);
- how examples are read and split: the run's preparation (runs/prepare.py) reads a corpus through the
  chunked engine where the task can (`chunked`: a language model, and a classifier, whose `line_parser`
  says what a line holds: label<TAB>text), else asks `read_lines` for a text's examples and what is
  predicted of each (a tagger's tag ids), splits them with `take` and saves them with `store`; `load`
  reads back what only the task stores (labels), checked, as a `TaskData`;
- the head and the loss: `model_fields` (the ModelConfig fields the data decides: a classifier's number of
  labels); `batch` (the batch of a step: inputs, targets, mask or lengths) and `loss_and_grads` (the mean
  loss and the gradients of one batch, over threads and MPI ranks); the math itself stays in core/
  (model.py, classifier.py): a task calls it;
- the validation loss `validation_loss`, and what `charrnn eval` reports: the api.Model methods that give
  its metrics (`eval_methods`, as a dict by `eval_result`) and the lines that show them (`eval_lines`);
- what its model file records (`metadata`: a classifier's labels) and the checks of what it reads back
  (`check_metadata`, `check_data`), which api.Model methods its models offer (`methods`: `sample` or
  `classify`, and its own command), and the words the front ends use for it (`noun`, `unit`, ...).

The shapes of the course notes' architectures, and how each fits:

- many-to-many, equal lengths (the language model; a tagger: one label per token): `batch` gives (B, T)
  inputs and (B, T) targets with a (B, T) mask, and `loss_and_grads` runs the stack over seq_len chunks
  with the state carried (model.py's head at every step: a tagger's head scores its tags instead of the
  vocabulary). A tagger's module reads JSON Lines or CoNLL in `read_lines` (each line's tag ids as its
  targets, split by `take`), stores (n_tokens,) tag ids beside the token ids in `store`, and reports
  seqeval-style metrics through its `eval_methods` and `eval_lines`.
- many-to-one (the classifier): `batch` gives padded lines, their lengths and (B,) label ids; the head
  reads the pooled outputs (classifier.py).
- many-to-many, different lengths (an encoder-decoder, a later issue): `read_lines` gives the source lines
  and, as targets, the target lines' ids, which `store` saves as a second id array with its offsets (task
  data, like a classifier's labels); `batch` gives the padded source as inputs and the padded target as
  targets, with both masks in `mask` (a Batch's fields are the task's to fill: only its own
  `loss_and_grads` reads them), and `loss_and_grads` runs an encoder stack and a decoder stack in core/ and
  returns the target tokens it scored; the loop, the run code and the front ends stay as they are, because
  they only pass a batch from `batch` to `loss_and_grads` and report the count it gives.

Every method has a plain default here where one exists; a task overrides what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import batches
from ..files import corpus
from ..errors import ConfigError, option


@dataclass
class TaskData:
    """What a task keeps beside a run's token ids: what it stored (see Task.load) and its batching cache.

    Subclasses add their arrays (a classifier: its label names and label ids). `arrays` lists what the
    run's fingerprint covers beyond the ids (None: nothing)."""
    order: tuple = (None, None)   # (epoch, permutation of the lines) of lines mode, one per epoch

    def epoch_order(self, run, epoch: int) -> list:
        """The line batches of an epoch of run's training lines, fixed by (seed, epoch) and made once per epoch:
        lines of similar length together (batches.bucketed_line_batches) when tconfig.buckets, else
        shuffled (batches.line_batches)."""
        cached_epoch, order = self.order
        if cached_epoch != epoch:
            tc = run.tconfig
            if tc.buckets:
                order = batches.bucketed_line_batches(np.diff(run.train_offsets), tc.batch_size, tc.seed, epoch)
            else:
                order = batches.line_batches(len(run.train_offsets) - 1, tc.batch_size, tc.seed, epoch)
            self.order = (epoch, order)
        return order

    @property
    def names(self) -> tuple:
        """Words the run's vocabulary fingerprint covers beside its tokens (a classifier's label names)."""
        return ()

    @property
    def arrays(self):
        """Arrays the run's data fingerprint covers beside the ids, as a tuple, or None."""
        return None


@dataclass(frozen=True)
class CommandOption:
    """An option of a task's own command (Task.command_options), as data the command line makes a flag of
    (`top_k`: `--top-k`)."""
    name: str           # its Python name: the keyword of api.Model.run_command, the flag's words
    type: type          # int, float, str
    default: object
    help: str
    flag: str = ""      # the flag's words where they are not the name's (output_format: --format)
    choices: tuple = ()  # the values it takes, where they are few


@dataclass(frozen=True)
class Batch:
    """One step's batch as the task made it; the loop passes it back to the task's loss_and_grads.

    - inputs: (B, T) token ids
    - targets: (B, T) next-token ids (a language model), (B,) label ids (a classifier), ...
    - mask: (B, T) bool of the scored positions, (B,) lengths (a classifier), or None (all scored)
    - reset: the batch starts from a zero state (lines); False: it goes on from the carried state (stream)
    """
    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None
    reset: bool


class Task:
    """The contract every task keeps (see the module's docstring); a task overrides what it changes.

    Attributes:
    - name: its `--task` value; noun: what the model is, in messages ("a language model"); summary: what
      it trains, in `--task`'s help
    - unit: what the loss is per, in progress lines and `info` ("token", "line")
    - modes, levels: the data modes and token levels it reads (a task that reads one mode has it by default)
    - model_options: the ModelConfig options only this task has (others must leave them at their defaults)
    - fine_tunes: whether a run of it can start from a trained model (`--init-from`)
    - bf16: whether its model takes `--precision bf16` (then its default where the CPU runs it fast)
    - methods: the methods of api.Model its models offer (`sample`, `score`, `annotate`; `classify`,
      `evaluate`); command: its own command (`charrnn sample`, `charrnn classify`)
    - command_options: the options of its own command where the command line builds it from the task
      (`own_command`), beside the input file, -c, --errors and --encoding
    - chunked: whether the corpus engine (textfile.py) prepares its examples (see line_parser); False: its
      own read_lines and store do, in memory (a tagger's JSON Lines or CoNLL)
    - files: the files it stores in a run's data folder beside the ids (a start that failed clears them)
    """
    name = ""
    noun = ""
    summary = ""
    unit = "token"
    modes = ("stream", "lines")
    levels = ("char", "word")
    model_options: tuple = ()
    fine_tunes = False
    bf16 = False
    methods: tuple = ()
    command = ""
    command_options: tuple = ()
    chunked = False
    files: tuple = ()

    # ------------------------------------------------------------ options

    def check(self, tconfig) -> None:
        """ConfigError for settings this task cannot train with (a TrainConfig, after its own check)."""
        if tconfig.mode not in self.modes or tconfig.level not in self.levels:
            raise ConfigError(f"{option('task', self.name)} takes {' or '.join(option('mode', m) for m in self.modes)} "
                              f"at {' or '.join(self.levels)} level, not {option('mode', tconfig.mode)} at "
                              f"{option('level', tconfig.level)}")

    def check_request(self, *, builtin: bool, folder: bool, init_from: bool, options: dict) -> None:
        """ConfigError for a training request this task cannot take, before any corpus is read.

        - builtin, folder, init_from: whether the corpus is a built-in one or a folder, and whether the run
          fine-tunes a model; options: the options given by name (a task sets its own defaults in it)
        """
        if len(self.modes) == 1:
            options.setdefault("mode", self.modes[0])  # the one mode it reads (a classifier: lines)
        if init_from and not self.fine_tunes:
            raise ConfigError(f"{option('init_from')} fine-tunes a language model; {option('task', self.name)} "
                              f"starts a fresh {self.noun.split(' ', 1)[1]}")

    def model_check(self, base_config) -> None:
        """ConfigError unless base_config, a model to fine-tune, is one this task fine-tunes."""

    # ------------------------------------------------------------ examples

    def check_text(self, text, which: str = "") -> None:
        """CorpusError when a line of a text in memory is too long to be one example (corpus.check_text_lines),
        before it is split into examples; `which`: "validation " or ""."""
        corpus.check_text_lines(text, which, labelled=self.labelled())

    def read_folder(self, folder):
        """A folder's corpus (a textfile.Folder) as the text this task reads from it, or None: the folder's
        files are its text as they are (a classifier makes label<TAB>text lines of them, the label each
        file's subfolder)."""
        return None

    def labelled(self) -> bool:
        """Whether its lines hold a label before a TAB (what check_text_lines skips of a line)."""
        return False

    def line_parser(self, validation: bool = False):
        """What a line of its corpus means to the chunked engine (textfile.py, for a task that is `chunked`):
        None, the line is the example (a language model); else a parser (corpus.LabelledLines) whose
        parse(line) gives (the line's tag, where its example starts) or None for a malformed line, with the
        messages for those (malformed, check_labels); the engine stores the tags' ids beside the ids.
        - validation: for a separate validation file"""
        return None

    def read_lines(self, text, where: str, names=None, level: str = "char"):
        """(lines, targets, names): the examples of a text in lines mode (a str, or Documents where the task
        reads folders) at token level `level`. lines: the texts whose tokens are the inputs, or lists of
        tokens taken whole (one id each, never split further); targets: an array indexed by line of what is
        predicted of each line beside its tokens (a classifier's label ids; a tagger's, one array of tag ids
        per line), or None; names: the target names in id order. names given: a validation text, whose
        targets map by the training text's names."""
        raise NotImplementedError

    def take(self, targets, rows):
        """The targets of the lines at `rows` (an index array, ascending), of targets as read_lines gave them
        for every line: how the held-out share is split off (a per-line array: targets[rows]; per-token
        targets, such as a tagger's, take each line's)."""
        return targets[rows]

    def store(self, data_dir, names: tuple, targets: tuple) -> None:
        """Write the targets of the two splits (train, val) and their names in the run's data folder (through
        atomic.py, as every file); only called when read_lines gave targets."""
        raise NotImplementedError

    def load(self, directory, offsets: tuple) -> TaskData:
        """The task's own stored data of a run (offsets: the train and val line boundaries, or Nones),
        checked against them; CheckpointError when it is damaged."""
        return TaskData()

    def model_fields(self, data: TaskData | None = None) -> dict:
        """The ModelConfig fields its data decides (a classifier: how many labels); data None: values that
        pass the model's checks before the data is read, so that bad options fail before any file is written."""
        return {}

    def check_data(self, data: TaskData, config, where: str) -> None:
        """CheckpointError unless a resumed model (config, from the state file at `where`) fits the task's data."""

    # ------------------------------------------------------------ training

    def batch(self, run, step: int) -> Batch:
        """The batch of a step (pure in the step number, the settings and the data: resume needs it)."""
        raise NotImplementedError

    def loss_and_grads(self, run, batch: Batch, state, rngs, group):
        """(mean loss, grads, final state or None, tokens scored) of one batch (see loop._loss_and_grads)."""
        raise NotImplementedError

    def validation_loss(self, run) -> float:
        """The mean loss on (up to tconfig.eval_tokens of) the held-out data; nan when there is none."""
        raise NotImplementedError

    # ------------------------------------------------------------ the model file

    def metadata(self, run) -> dict:
        """Entries the model file records for this task, beside the vocabulary and settings."""
        return {}

    def check_metadata(self, meta: dict, config, where: str) -> None:
        """CheckpointError unless what metadata() wrote reads back well-formed for config (in place)."""

    def line_text(self, vocab, ids) -> str:
        """One stored line (its ids) as text that the task's own commands read back (a tagger's: a JSON line
        of its tokens, which may hold spaces between them that no decoding could tell from its words)."""
        return vocab.decode(ids)

    def annotate(self, params, config, vocab, names, text: str, max_chars: int | None):
        """What `annotate` shows of a text, for a task whose models show their own view of it (a tagger: each
        token's tags, a TagAnnotation); None: the language model's per-step annotation (work/annotate.py)."""
        return None

    def labels(self, meta: dict) -> list:
        """The names of what its model predicts, from a model file's metadata (a classifier's labels; [] for
        a model whose outputs are its vocabulary)."""
        return []

    # ------------------------------------------------------------ what the front ends say of it (as text)

    def count_unit(self, level: str) -> str:
        """What training's progress and `eval` count a loss per, at this token level ("char", "token", "line")."""
        return self.unit

    def outputs(self, config) -> tuple:
        """(how many, what) the head scores: (V, "tokens") for a language model, (C, "labels") for a classifier."""
        raise NotImplementedError

    def model_summary(self, config) -> str:
        """What follows the cell and size in training's first line (", classifier over 3 labels"), or ""."""
        return ""

    def model_details(self, config, meta: dict) -> str:
        """What follows the model's settings in `info` (a classifier's labels and pooling), or ""."""
        return ""

    def data_line(self, data: dict) -> str:
        """`info`'s line about the training data, from the model file's "data" entry."""
        return f"{data.get('mode', '?')} mode, sequence length {data.get('seq_len', '?')}"

    def torch_options(self, config) -> dict:
        """The torch.nn module's keyword arguments beyond its defaults that the model needs (a bidirectional
        classifier's), by name."""
        return {}

    def next_line(self, c: str) -> str:
        """The commands to try a trained model with, `c` the option naming its run ("-c checkpoints/x")."""
        return f"charrnn eval {c} (the held-out loss)"

    # ------------------------------------------------------------ its own command

    @property
    def own_command(self) -> bool:
        """Whether the command line builds the task's command from it (command_lines, command_options, and
        command_lines' docstring as its help); a language model's `sample` is written out in cli.py."""
        return type(self).command_lines is not Task.command_lines

    def command_lines(self, model, path, errors: str, encoding, shown, **options):
        """The text the task's own command prints, a piece at a time (each piece ends its own lines), for
        the input at path ("-": standard input), read with
        errors and encoding (None: the model's), of an api.Model whose methods it calls; shown: the front
        end's escape of a name read from the model file; options: its command_options by name. Checks come
        before the first line. Its docstring, in a task that defines it, is the command's help."""
        raise NotImplementedError

    # ------------------------------------------------------------ `charrnn eval`

    # The api.Model methods that give its metrics: of the stored held-out split (no arguments), and of a file
    # (path, errors, encoding). Their results become a dict by eval_result.
    eval_methods: tuple = ()

    def eval_result(self, value) -> dict:
        """The metrics an eval method gave, as the dict `charrnn eval --json` prints."""
        return dict(value)

    def eval_warning(self, result: dict, meta: dict) -> str | None:
        """A warning about what the figures mean for this text (printed before them), or None."""
        return None

    def eval_lines(self, result: dict, source: str, unit: str, shown) -> list:
        """The lines `charrnn eval` prints of result: the source's name, its figures, and whatever table the
        task has. shown: the front end's escape of a name read from a file (a label), applied to every one."""
        raise NotImplementedError


def summed_over_ranks(params: dict, group, nll: float, grads: dict, total: int):
    """(loss, grads) summed over the MPI ranks in rank order; grads travel as one flat buffer."""
    names = list(params)  # the same order on every rank
    flat = group.sum_in_rank_order(np.concatenate([grads[k].ravel() for k in names]))
    out, at = {}, 0
    for k in names:
        n = params[k].size
        out[k] = flat[at:at + n].reshape(params[k].shape)
        at += n
    nll = float(group.sum_in_rank_order(np.array([nll], np.float64))[0])
    return (nll / total if total else 0.0), out


CONFUSIONS_SHOWN = 20  # eval with too many kinds for a confusion table: its most frequent mistakes


def confusion_lines(names: list, result: dict, kind: str, dense_limit: int) -> list:
    """What eval prints of a confusion matrix: a table, rows the true kind and columns the predicted one;
    or, where result["confusion"] is None (more kinds than dense_limit, whose C x C cells would be mostly
    zeros), the CONFUSIONS_SHOWN most frequent mistakes from result["pairs"] (true id, predicted id, count).

    - names: the kinds' printable names, in id order; kind: what one is called ("label", "tag")
    Returns the lines, without line ends.
    """
    if result["confusion"] is None:
        mistakes = sorted((p for p in result["pairs"] if p[0] != p[1]), key=lambda p: (-p[2], p[0], p[1]))
        listed = mistakes[:CONFUSIONS_SHOWN]
        return [f"confusion: {len(names):,} {kind}s are too many for a table (it is printed for up to "
                f"{dense_limit}; {option('as_json')} gives every non-zero cell as \"pairs\"); "
                f"the {len(listed)} most frequent of {len(mistakes):,} kinds of mistake:"] + \
            [f"  {count:>8,}  {names[true]} -> {names[predicted]}" for true, predicted, count in listed]
    width = max(max(len(n) for n in names), max(len(f"{c:,}") for row in result["confusion"] for c in row))
    return [f"confusion (rows: true {kind}, columns: predicted)",
            " " * width + "  " + "  ".join(f"{n:>{width}}" for n in names)] + \
        [f"{name:>{width}}  " + "  ".join(f"{c:>{width},}" for c in row) for name, row in zip(names, result["confusion"])]
