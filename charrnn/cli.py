"""The `charrnn` command line: train, sample, eval, info, plot.

The only module that exits, and with progress.py the only one that prints or draws progress bars.
Generated text goes to stdout; progress, logs and errors go to stderr. Every library error becomes
one line, `Error: ...`, and a non-zero exit. A thin layer: it imports nothing of charrnn but the API,
the errors, the constants and progress.py (tests/test_cli_thin.py checks), and renders what the API returns.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import statistics
import sys
import time
import warnings

import click

from . import __version__, api
from . import errors as errors_module
from .constants import (BEST_FILE, CELLS, DTYPES, LEVELS, MAX_CHARS, MODES, NONFINITE, OPTIMIZERS, POOLS,
                        PRECISIONS, SCHEDULES, TASKS, TASKS_HELP, TASK_COMMANDS, TEXT_ERRORS, TRAIN_DEFAULTS)
from .errors import CharRNNError, ConfigError
from .progress import TrainingView, info, shown, to_devnull


# ---------------------------------------------------------------- help text in groups


class GroupedCommand(click.Command):
    """A command whose --help lists options under headings (data, model, ...)."""

    def format_options(self, ctx, formatter):
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Argument):  # the usage line and docstring describe arguments
                continue
            record = param.get_help_record(ctx)
            if record:
                sections.setdefault(getattr(param, "group", None) or "Other options", []).append(record)
        if "Other options" in sections:  # --help last, after the named groups
            sections["Other options"] = sections.pop("Other options")
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


class GroupedOption(click.Option):
    """An option of `charrnn train`, listed under its group; a training option's default is the library's
    (TRAIN_DEFAULTS), never one of its own."""

    def __init__(self, param_decls, group: str | None = None, **kwargs):
        kwargs.setdefault("show_default", True)
        names = [d for d in param_decls if d.isidentifier()]  # the name click gives it: its own, or its flag's
        name = names[0] if names else max((d.split("/")[0] for d in param_decls), key=len).lstrip("-").replace("-", "_")
        if name in TRAIN_DEFAULTS:
            assert "default" not in kwargs, f"--{name}: its default is the library's"
            kwargs["default"] = TRAIN_DEFAULTS[name]
        super().__init__(param_decls, **kwargs)
        assert self.name == name, (self.name, name)
        self.group = group


def option(*args, **kwargs):
    return click.option(*args, cls=GroupedOption, **kwargs)


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1m30s', '1h30m', '1.5h', '2d' or plain seconds -> seconds (api.parse_duration);
    a usage error (exit 2) otherwise."""
    try:
        return api.parse_duration(text)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-time") from None


# ---------------------------------------------------------------- the group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="charrnn")
@click.pass_context
def cli(ctx):
    """Character-level language models (RNN, LSTM, GRU) on a NumPy core.

    \b
    charrnn train corpus.txt      train; progress bar, validation loss, checkpoints
    charrnn sample --temp 0.8     new text from the latest run
    charrnn eval                  perplexity and bits per character
    charrnn annotate text.txt     a web page of per-character scores and neurons
    charrnn info                  what a checkpoint holds
    charrnn classify lines.txt    label lines with a classifier (train --task classify)
    charrnn tag sentences.txt     tag each token with a tagger (train --task tag)
    charrnn plot                  a run's loss curves as a PNG
    charrnn corpora               the built-in corpora (charrnn train --corpus NAME)

    Run `charrnn COMMAND --help` for a command's options.
    """
    _running["command"] = ctx.invoked_subcommand  # for the out-of-memory hint


# ---------------------------------------------------------------- train

DATA, MODEL, OPTIM, OUTPUT = "Data", "Model", "Optimization", "Budget and output"
AUTO = "  [default: auto, from the corpus size and budget]"


@cli.command(cls=GroupedCommand)
@click.argument("corpus_file", metavar="[CORPUS]", required=False, type=click.Path(exists=True, path_type=str))
@option("--corpus", "builtin", default=None, metavar="NAME", group=DATA,
        help="Train on a built-in corpus instead of a file (charrnn corpora lists them).  "
             "[default: python-reference when no CORPUS is given]")
@option("--glob", "pattern", default=None, metavar="PATTERN", group=DATA,
        help="With a folder as CORPUS: only the files whose names match, such as '*.py'.  [default: every file]")
@option("--val", "val_file", type=click.Path(exists=True, dir_okay=False), default=None, group=DATA,
        help="Validation text file (default: hold out the last --val-frac of the corpus).")
@option("--val-frac", type=float, group=DATA, help="Share of the corpus held out for validation.")
@option("--task", type=click.Choice(TASKS), group=DATA,
        help=TASKS_HELP)
@option("--mode", type=click.Choice(MODES), group=DATA,
        help="stream: one long text; lines: every non-empty line is one example (names, titles).")
@option("--level", type=click.Choice(LEVELS), group=DATA, help="Token unit.")
@option("--min-count", type=int, group=DATA,
        help="Tokens seen fewer times become UNK.  [default: 1; 2 at word level, so that the model learns <unk> "
             "from the words seen once]")
@option("--max-vocab", type=int, group=DATA, help="Keep only the most frequent tokens, the rest UNK.  [default: "
        "10,000 at word level, else no limit; word level counts at most 1,048,576 distinct words, the rarest "
        "dropped past that]")
@option("--errors", type=click.Choice(TEXT_ERRORS), group=DATA,
        help="Invalid UTF-8: stop with an error, or replace the bad bytes.")
@option("--encoding", metavar="CODEC", group=DATA,
        help="The text encoding of CORPUS and --val: any Python knows, such as latin-1, cp1252 or utf-16. "
             "The model records it: eval, annotate and classify read files in it.")
@option("--cell", type=click.Choice(CELLS), group=MODEL, help="Recurrent cell.")
@option("--layers", type=int, group=MODEL, help="Stacked recurrent layers." + AUTO)
@option("--hidden", type=int, group=MODEL, help="Hidden units per layer." + AUTO)
@option("--embed", type=int, group=MODEL, help="Embedding width." + AUTO)
@option("--dropout", type=float, group=MODEL,
        help="Dropout on each layer's output (training only)." + AUTO)
@option("--dtype", type=click.Choice(DTYPES), group=MODEL,
        help="Floating-point precision.")
@option("--precision", type=click.Choice(PRECISIONS), group=MODEL,
        help="The matrix products' inputs: float32, or bf16 (bfloat16 inputs, float32 sums; the weights, optimizer, "
             "gates and loss stay float32). A saved setting: the same numbers on any machine, fast where the CPU "
             "has AVX512-BF16.  [default: bf16 for a language model where the CPU has AVX512-BF16, else float32]")
@option("--bidirectional", is_flag=True, group=MODEL,
        help="Classifier or tagger: every layer also reads the line right to left.")
@option("--pool", type=click.Choice(POOLS), group=MODEL,
        help="Classifier: pool the top layer over time by the mean of its outputs, or its last state.")
@option("--init-from", type=click.Path(exists=True), default=None, metavar="RUN_OR_MODEL", group=MODEL,
        help="Fine-tune: start from this trained model's weights and architecture (a run directory or a "
             "model file); the optimizer and schedule start fresh.  [default: a fresh model]")
@option("--extend-vocab", is_flag=True, default=False, group=MODEL,
        help="With --init-from: add the new text's unseen characters to the vocabulary (else they become UNK).")
@option("--optim", type=click.Choice(OPTIMIZERS), group=OPTIM,
        help="Optimizer (adagrad learns fastest on the reference benchmark; see docs/performance.md).")
@option("--lr", type=float, group=OPTIM, help="Peak learning rate." + AUTO)
@option("--momentum", type=float, group=OPTIM, help="Momentum (sgd).")
@option("--weight-decay", type=float, group=OPTIM, help="Decoupled weight decay (adam).")
@option("--clip", type=float, group=OPTIM, help="Global gradient-norm limit (0: off).")
@option("--clip-value", type=float, group=OPTIM,
        help="Elementwise gradient limit, as min-char-rnn's 5 (default: off).")
@option("--schedule", type=click.Choice(SCHEDULES), group=OPTIM,
        help="Learning-rate schedule; cosine decays to a tenth of --lr by the end of the budget." + AUTO)
@option("--warmup", type=int, group=OPTIM, help="Steps of linear learning-rate warm-up." + AUTO)
@option("--batch-size", type=int, group=OPTIM, help="Parallel streams (or lines) per step." + AUTO)
@option("--seq-len", type=int, group=OPTIM, help="Time steps per truncated-BPTT window." + AUTO)
@option("--seed", type=int, group=OPTIM, help="Seed for initialization, batches and dropout.")
@option("--buckets/--no-buckets", group=OPTIM,
        help="Lines mode: batch lines of similar length together, so that little of a batch is padding (the "
             "batches are still drawn afresh each epoch from the seed); --no-buckets: shuffled lines.")
@option("--threads", type=int, group=OPTIM,
        help="Cut each batch into this many row blocks, one thread each. A setting, not a count of cores: "
             "the same value gives the same numbers on any machine.  [default: blocks of at least 32 rows, "
             "at most 2: 1 below a batch of 64]")
@option("--max-steps", type=int, group=OUTPUT, help="Stop after this many steps.  [default: no limit]")
@option("--max-epochs", type=float, group=OUTPUT, help="Stop after this many passes over the data.  [default: no limit]")
@option("--max-time", type=str, metavar="DURATION", group=OUTPUT,
        help="Stop after this much wall time, such as 90s, 10m, 1m30s, 1h30m, 1.5h.  [default: 5m when no budget is given]")
@option("--eval-every", type=int, group=OUTPUT,
        help="Evaluate and save every N steps.  [default: auto, a quarter of a pass over the data, at least 10 "
             "times in the budget and once a minute, as often as keeps evaluation to about a tenth of the time]")
@option("--patience", type=int, group=OUTPUT,
        help="Stop after this many evaluations in a row without a new best validation loss, keeping the best, "
             "once the learning rate is half way down its schedule or the loss is 3% above the best (0: never stop "
             "early).")
@option("--keep", type=int, metavar="N", group=OUTPUT,
        help="Keep the model files of the N best evaluations in RUN/snapshots, named by step and validation "
             "loss (sample and eval take them with -c).  [default: 0, none]")
@option("--eval-tokens", type=int, group=OUTPUT,
        help="Validation tokens scored per evaluation (charrnn eval scores them all).")
@option("--log-every", type=int, group=OUTPUT, help="Write a log.jsonl line every N steps.")
@option("--on-nonfinite", type=click.Choice(NONFINITE), group=OUTPUT,
        help="What to do when the loss or a gradient is not finite.")
@option("--out", type=click.Path(file_okay=False), default=None, group=OUTPUT,
        help="Run directory.  [default: checkpoints/<corpus name>]")
@option("--resume", type=click.Path(exists=True, file_okay=False), default=None, group=OUTPUT,
        help="Continue the run in this directory exactly where it stopped. Budgets given now replace the "
             "run's budgets and count the whole run; --lr, --schedule or --warmup given now start a new "
             "learning-rate schedule from the current step.")
@option("--no-lock", is_flag=True, default=False, group=OUTPUT,
        help="Train without the run directory's lock, on a filesystem that cannot lock; then make sure no "
             "other trainer writes the same run.")
@option("-q", "--quiet", is_flag=True, default=False, group=OUTPUT, help="Print nothing but errors.")
@click.pass_context
def train(ctx, corpus_file, builtin, pattern, val_file, errors, out, resume, quiet, no_lock, init_from,
          extend_vocab, **options):
    """Train a model on CORPUS: a UTF-8 text file, or a folder of them.

    A folder is read recursively in sorted order (hidden files left out);
    binary and undecodable files are skipped. In stream mode each file ends
    with the end-of-sequence token; in lines mode the lines of all files are
    pooled. Without CORPUS it trains on a built-in corpus (--corpus, default
    python-reference: the language reference that ships with your Python).

    \b
    Examples:
      charrnn train                                  # built-in corpus, 5 minutes
      charrnn train tinyshakespeare.txt --max-time 10m
      charrnn train names.txt --mode lines --max-time 2m    # stops early once it only overfits
      charrnn train kinds.tsv --task classify --bidirectional --max-time 5m
      charrnn train src/ --glob '*.py' --max-time 10m
      charrnn train --corpus unicode-names --max-time 5m
      charrnn train poems.txt --init-from checkpoints/shakespeare --max-time 2m
      charrnn train --resume checkpoints/shakespeare --max-time 20m
    """
    options["max_time"] = parse_duration(options["max_time"])  # a bad duration is a usage error
    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if ctx.get_parameter_source("errors") != click.core.ParameterSource.COMMANDLINE:
        errors = None
    follower = api.mpi_rank() != 0  # under MPI the other ranks print nothing but errors
    show = TrainingView(quiet or follower)
    with StopRequest(quiet=follower) as stop:
        api.train(corpus_file, out, resume=resume, val=val_file, errors=errors, lock=not no_lock,
                  on_event=show, should_stop=stop, builtin=builtin, glob=pattern, init_from=init_from,
                  extend_vocab=extend_vocab, **given)
    if stop.signal is not None:
        sys.exit(128 + stop.signal)


class StopRequest:
    """Turns SIGINT/SIGTERM into a request to stop after the current step and save.

    Further signals while stopping are ignored, so a second Ctrl-C cannot
    interrupt the save (the writes are atomic in any case).
    """

    def __init__(self, quiet: bool = False):
        self.signal = None
        self.previous = {}
        self.quiet = quiet

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal = signum
            info("\nStopping after this step and saving (signals are ignored until then)...", self.quiet)

    def __exit__(self, *exc):
        if self.signal is not None:
            # once stopping, the process only exits: more signals on the way out are ignored too,
            # so they cannot turn into a KeyboardInterrupt traceback after the save
            _quiet_from_now_on()
            return
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.signal is not None


# ---------------------------------------------------------------- loading a model


CHECKPOINT_HELP = ("A run directory (its best.safetensors) or a model file.  "
                   "[default: the newest run under checkpoints/]")


def _checkpoint_option(f):
    return click.option("--checkpoint", "-c", "checkpoint_path", type=click.Path(exists=True), default=None,
                        help=CHECKPOINT_HELP)(f)


def _quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, default=False,
                        help="Do not name the checkpoint used on stderr.")(f)


def _one_checkpoint(positional: str | None, option_value: str | None, name: str) -> str | None:
    """The checkpoint named by a command's positional argument or its -c/--checkpoint (not two different ones)."""
    if positional is not None and option_value is not None and \
            os.path.abspath(positional) != os.path.abspath(option_value):
        raise click.UsageError(f"give the checkpoint once: {name} {positional!r} or --checkpoint "
                               f"{option_value!r}, not both")
    return positional if positional is not None else option_value


def _using(model, quiet: bool) -> None:
    """One stderr line naming the model file a command reads (an api.Model), with its step and validation loss."""
    model_file, training = model.path, model.training
    parts = [f"step {training['step']:,}"] if "step" in training else []
    best = training.get("best_val_loss")
    if best is not None:
        label = "val" if os.path.basename(model_file) == BEST_FILE else "best val so far"
        parts.append(f"{label} {best:.3f}")
    info(f"using {shown(model_file)}" + (f" ({', '.join(parts)})" if parts else ""), quiet)


# ---------------------------------------------------------------- sample


@cli.command()
@_checkpoint_option
@click.option("--temp", "temperature", default="1.0", show_default=True, metavar="T[,T...]",
              help="Sampling temperature; 0 always takes the most likely token. Several, such as 0.5,0.8,1.0, "
                   "give -n samples at each, labelled on stderr.")
@click.option("--top-k", type=int, default=None, help="Sample only among the K most likely tokens.  [default: off]")
@click.option("--top-p", type=float, default=None, help="Sample only among the most likely tokens that cover P.  [default: off]")
@click.option("--prime", default="", help="Text to start from; the model continues it.  [default: none]")
@click.option("--prime-file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Start from the text of this file (- for stdin), read in the model's encoding.")
@click.option("--stop", multiple=True, metavar="STR",
              help="End a sample where its text comes to STR (kept); repeatable; \\n and \\t stand for a newline "
                   "and a tab. Each sample's reason to end goes to stderr.")
@click.option("--no-prime-echo", is_flag=True, help="Do not print the prime before the continuation.")
@click.option("--length", type=int, default=500, show_default=True, help="Most tokens per sample.")
@click.option("-n", "--num-samples", type=int, default=1, show_default=True,
              help="Samples to generate (together, as one batch; in memory-bounded groups for very many).")
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.  [default: random]")
@click.option("--novelty", is_flag=True,
              help="Report on stderr how new each sample is: in lines mode whether it copies a training or "
                   "validation line, in stream mode its longest stretch found verbatim in the training text.")
@click.option("--interactive", is_flag=True,
              help="Write together with the model in a terminal: pick among its likeliest next tokens, type "
                   "text, or press Enter for a chunk; Ctrl-D ends and prints the text.")
@click.option("--choices", type=int, default=10, show_default=True,
              help="With --interactive: how many of the likeliest next tokens to offer.")
@click.option("--chunk", type=int, default=40, show_default=True,
              help="With --interactive: tokens the model writes when you press Enter.")
@_quiet_option
def sample(checkpoint_path, temperature, top_k, top_p, prime, prime_file, stop, no_prime_echo, length, num_samples,
           seed, novelty, interactive, choices, chunk, quiet):
    """Generate text from a trained model, streamed to stdout.

    Each sample stops at the end-of-sequence token or after --length tokens.
    In lines mode each sample is one line; otherwise samples are separated by
    a blank line. A prime with characters the model never saw is an error.

    \b
    Examples:
      charrnn sample --temp 0.8
      charrnn sample --prime "ROMEO:" --length 300 --seed 1
      charrnn sample -c checkpoints/names -n 20 --temp 0.7
      charrnn sample -n 10 --novelty          # how many samples copy the training text
      charrnn sample --interactive --prime "ROMEO:"
      charrnn sample --prime-file opening.txt --stop '\\n\\n' --temp 0.5,0.8,1.0
    """
    temperatures = _temperatures(temperature)
    stops = tuple(_unescaped(s) for s in stop)
    if prime_file is not None and prime:
        raise click.UsageError("give --prime or --prime-file, not both")
    model = api.load(checkpoint_path)
    if prime_file is not None:
        prime = model.read_text(prime_file)
        if model.lines and prime.endswith("\n"):  # the file's last line end: a lines model's prime is a line's start
            prime = prime[:-1]
    if interactive:
        if num_samples != 1 or novelty or len(temperatures) > 1 or stops:
            raise ConfigError("--interactive writes one text: it cannot be given with -n, --novelty, --stop or "
                              "several temperatures")
        temperature = temperatures[0]
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise ConfigError("--interactive needs a terminal to talk to (stdin and stderr); without one, "
                              "use charrnn sample without --interactive")
        _using(model, quiet)
        return _interactive(model, prime, temperature, top_k, top_p, choices, chunk, seed)
    for t in temperatures:  # every temperature is checked before anything is written
        api.check_sampling(t, top_k, top_p, length, num_samples)
    index = _novelty_index(model) if novelty else None
    # the options and the prime are checked here, before anything is written
    groups = [model.sample_stream(num_samples, prime=prime, length=length, temperature=t,
                                  top_k=top_k, top_p=top_p, seed=seed, stop=stops) if i == 0 else None
              for i, t in enumerate(temperatures)]
    _using(model, quiet)
    echo = "" if no_prime_echo else prime
    separator = "\n" if model.lines else "\n\n"
    out = sys.stdout
    for i, t in enumerate(temperatures):
        made = [] if index is not None else None  # each sample's generated text, for --novelty only
        samples = groups[i] or model.sample_stream(num_samples, prime=prime, length=length, temperature=t,
                                                    top_k=top_k, top_p=top_p, seed=seed, stop=stops)
        try:
            if len(temperatures) > 1:
                out.write(separator[1:] if i else "")  # after the group's last newline: a blank line in stream mode
                out.flush()
                info(f"temperature {t:g}:" + (f" {num_samples} samples" if num_samples > 1 else ""))
            for number, pieces in enumerate(samples):  # in order, each written as it comes (memory stays flat)
                out.write((separator if number else "") + echo)
                text = []
                for piece in pieces:
                    out.write(piece)
                    if number == 0:
                        out.flush()  # the first sample streams as it is made
                    if made is not None:
                        text.append(piece)
                if made is not None:
                    made.append("".join(text))
                if stops:
                    out.flush()
                    info(f"sample {number + 1}: {_why_ended(pieces, length, model.vocab.level)}")
            out.write("\n")
            out.flush()
        except BrokenPipeError:
            to_devnull(sys.stdout)  # the reader went away (`charrnn sample | head`)
            return
        if made is not None:
            _novelty_report(index, made, prime if model.lines else None)


def _temperatures(value: str) -> list[float]:
    """--temp: one temperature or several, comma-separated (a usage error otherwise)."""
    try:
        temps = [float(part) for part in str(value).split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number or comma-separated numbers, such as 0.8 or "
                                 f"0.5,0.8,1.0", param_hint="'--temp'") from None
    return temps


def _unescaped(text: str) -> str:
    """A --stop string with \\n, \\t and \\\\ read as a newline, a tab and a backslash."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _why_ended(sample, length: int, level: str) -> str:
    if sample.ended == "stop":
        return f"ended at the stop string {sample.stop_string!r}"
    if sample.ended == "eos":
        return "ended at the end-of-sequence token"
    return f"reached the length limit ({length:,} {'characters' if level == 'char' else 'tokens'})"


def _novelty_index(model):
    """The model's novelty index for --novelty (api.Novelty), saying on stderr when it is built."""
    started = time.monotonic()
    index = model.novelty()
    if index.built and not index.lines:
        info(f"Indexed the {index.tokens:,} training tokens for --novelty in {time.monotonic() - started:.1f}s "
             f"(kept in {index.kept_in})")
    return index


def _novelty_report(index, samples: list[str], prime: str | None) -> None:
    """Per sample and in total, on stderr: copies of training/validation lines (lines mode: prime is the
    prime, part of each line), or the longest stretch of each generated text found verbatim in training."""
    if prime is not None:
        labels = []
        for i, text in enumerate(samples, 1):
            copied = index.copied(prime + text)
            labels.append(f"in {copied}" if copied else "new")
            shown = text if len(text) <= 60 else text[:57] + "..."
            info(f"sample {i}: {labels[-1]}: {prime + shown!r}")
        info(f"novelty: {len(samples)} samples: {labels.count('in train')} in train, "
             f"{labels.count('in validation')} in validation, {labels.count('new')} new")
        return
    longest = []
    for i, text in enumerate(samples, 1):
        length, tokens, stretch = index.longest(text)
        longest.append(length)
        quoted = repr(stretch if len(stretch) <= 60 else stretch[:57] + "...")
        info(f"sample {i}: longest stretch found in the training text: {length} {index.unit} of {tokens}"
             + (f": {quoted}" if length else ""))
    info(f"novelty: the longest verbatim stretch per sample is {int(statistics.median(longest))} {index.unit} at "
         f"the median, {max(longest)} at most")


def _interactive(model, prime, temperature, top_k, top_p, choices, chunk, seed) -> None:
    """Write a text together with the model: the display and the prompts on stderr, the final text on stdout."""
    if choices < 1 or chunk < 1:
        raise ConfigError("--choices and --chunk must be at least 1")
    session = model.session(prime, temperature, top_k, top_p, seed)
    tell = lambda text="": click.echo(text, err=True)  # noqa: E731
    tell("Interactive sampling: a number picks that token, text you type is added as it is (a leading \\ "
         f"types a number), Enter lets the model write {chunk} tokens, Ctrl-D ends (the text goes to stdout).")
    note = ""
    while True:
        tail = session.text[-400:]
        tell("\n" + "-" * 60 + "\n" + ("..." if len(session.text) > 400 else "") + tail + "\u2588")
        if note:
            tell(note)
        top = session.choices(choices)
        tell("  ".join(f"{i}) {'(end)' if c.end else repr(c.text)} {c.prob:.1%}" for i, c in enumerate(top, 1)))
        click.echo("> ", err=True, nl=False)
        line = sys.stdin.readline()
        if line == "":
            break
        entry = line[:-1] if line.endswith("\n") else line
        note = ""
        if entry == "":
            wrote, ended = session.write(chunk)
            note = "(the model ended the text here)" if ended and not wrote else ""
        elif entry.strip().isdigit() and 1 <= int(entry) <= len(top):
            choice = top[int(entry) - 1]
            if choice.end:
                break
            session.pick(choice)
        else:
            typed = entry[1:] if entry.startswith("\\") else entry  # "\\3" types a 3 instead of picking
            try:
                session.type(typed)
            except CharRNNError as exc:
                note = f"not added: {exc}"
        if not line.endswith("\n"):
            break  # Ctrl-D after text on the line: that text, then the end
    tell("")
    sys.stdout.write(session.text + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- eval

@cli.command("eval")
@click.argument("text_file", required=False, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@_checkpoint_option
@click.option("--errors", type=click.Choice(TEXT_ERRORS), default="strict", show_default=True,
              help="Invalid UTF-8 in TEXT_FILE: stop with an error, or replace the bad bytes.")
@click.option("--encoding", default=None, metavar="CODEC",
              help="The text encoding of TEXT_FILE, such as latin-1 or cp1252.  [default: the model's, utf-8 "
                   "unless it was trained with another]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_quiet_option
def eval_(text_file, checkpoint_path, errors, encoding, as_json, quiet):
    """Score TEXT_FILE (or - for stdin), or the run's held-out split, with a trained model.

    Reports the mean negative log-likelihood per token (nats), perplexity,
    bits per token, and how many tokens were scored and unknown. Without
    TEXT_FILE it scores the validation ids stored in the run directory.
    A classifier reports accuracy, macro-F1, loss per line and the confusion
    matrix, on label<TAB>text lines.

    \b
    Examples:
      charrnn eval
      charrnn eval held_out.txt --json
      cat notes.txt | charrnn eval -
    """
    model = api.load(checkpoint_path)
    result, source = model.metrics(text_file, errors, encoding)
    _using(model, quiet)
    warning = model.task.eval_warning(result, model.meta)
    if warning:
        info(warning)
    if as_json:
        # NaN and infinity are not JSON: a broken model's non-finite figures become null
        click.echo(json.dumps(api.json_safe(result), allow_nan=False))
        return
    for line in model.task.eval_lines(result, source, model.task.count_unit(model.vocab.level), shown):
        click.echo(line)


# ---------------------------------------------------------------- a task's own command (classify, tag)


def _task_command(name: str, help_text: str, options: tuple) -> None:
    """Add a task's own command (`charrnn classify`), built from what the task says of it (constants.
    TASK_COMMANDS): TEXT_FILE (or "-"), -c, the task's options, --errors and --encoding; it prints what
    api.Model.run_command gives."""
    def command(text_file, checkpoint_path, errors, encoding, **given):
        model = api.load(checkpoint_path)
        out = sys.stdout
        try:
            for piece in model.run_command(name, text_file, errors, encoding, shown, **given):
                out.write(piece)
            out.flush()
        except BrokenPipeError:  # `charrnn classify | head`: not an error
            to_devnull(sys.stdout)

    command.__doc__ = help_text
    command = click.option("--encoding", default=None, metavar="CODEC",
                           help="The text encoding of TEXT_FILE, such as latin-1 or cp1252.  [default: the model's, "
                                "utf-8 unless it was trained with another]")(command)
    command = click.option("--errors", type=click.Choice(TEXT_ERRORS), default="strict", show_default=True,
                           help="Invalid UTF-8: stop with an error, or replace the bad bytes.")(command)
    for spec in reversed(options):
        command = click.option("--" + (spec.flag or spec.name).replace("_", "-"), spec.name,
                               type=click.Choice(spec.choices) if spec.choices else spec.type, default=spec.default,
                               show_default=True, help=spec.help)(command)
    command = _checkpoint_option(command)
    command = click.argument("text_file", required=False, default="-",
                             type=click.Path(dir_okay=False, allow_dash=True))(command)
    cli.command(name)(command)


for _name, _help, _options in TASK_COMMANDS:
    _task_command(_name, _help, _options)


# ---------------------------------------------------------------- annotate


@cli.command("annotate")
@click.argument("text_file", required=False, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@_checkpoint_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="The HTML page to write.  [default: annotate.html in the run directory]")
@click.option("--json", "as_json", is_flag=True,
              help="Write one JSON object per scored token to stdout (JSON lines) instead of a page.")
@click.option("--states", is_flag=True, help="With --json: add every layer's h, tanh(c) and gate values.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Guesses kept per token.")
@click.option("--max-chars", type=int, default=MAX_CHARS, show_default=True,
              help="Annotate at most this many characters (the rest is cut, with a notice).")
@click.option("--errors", type=click.Choice(TEXT_ERRORS), default="strict", show_default=True,
              help="Invalid UTF-8 in TEXT_FILE: stop with an error, or replace the bad bytes.")
@click.option("--encoding", default=None, metavar="CODEC",
              help="The text encoding of TEXT_FILE, such as latin-1 or cp1252.  [default: the model's, utf-8 "
                   "unless it was trained with another]")
@_quiet_option
def annotate_(text_file, checkpoint_path, out_path, as_json, states, top_k, max_chars, errors, encoding, quiet):
    """See inside a model: score TEXT_FILE (or - for stdin) character by character.

    Writes one self-contained HTML page (it opens offline and can be mailed):
    the text shaded by how surprised the model was at each character, its
    top guesses on hover, a neuron view colouring the text by one unit, the
    units that follow simple features of the text (quotes, brackets, position
    in the line, ...), and how often each gate saturates. Without TEXT_FILE
    it annotates the start of the run's held-out split.

    \b
    Examples:
      charrnn annotate poem.txt                      # writes annotate.html in the run directory
      charrnn annotate poem.txt --out poem.html
      echo "To be, or not to be" | charrnn annotate - --json
    """
    if states and not as_json:
        raise click.UsageError("--states goes with --json (the page always holds the activations)")
    model = api.load(checkpoint_path)
    ann, source, counted = model.annotate_input(text_file, top_k, max_chars, errors, encoding)
    _using(model, quiet)
    if ann.cut:
        more = f"{ann.cut:,} more are cut" if counted else "the rest is cut"
        info(f"Annotating the first {ann.text_chars:,} characters of {source}; {more} (--max-chars sets the limit)")
    if ann.score.unknown:
        info(f"{ann.score.unknown:,} of {ann.score.tokens:,} tokens are unknown to the model (marked; "
             f"scored as the unknown token)")
    if as_json:
        out = sys.stdout
        try:
            for record in api.annotation_records(ann, states):
                out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            out.flush()
        except BrokenPipeError:
            to_devnull(sys.stdout)
        return
    out_path = model.write_page(ann, out_path, source)
    info(f"Wrote {shown(out_path)}: {ann.summary()}; open it in a browser")


# ---------------------------------------------------------------- info and plot


@cli.command("info")
@click.argument("checkpoint", required=False, type=click.Path(exists=True))
@_checkpoint_option
def info_(checkpoint, checkpoint_path):
    """Describe a trained model: architecture, vocabulary, training, files.

    CHECKPOINT (or -c CHECKPOINT) is a run directory, meaning its
    best.safetensors, or a model file (default: the newest run under
    checkpoints/).

    \b
    Examples:
      charrnn info checkpoints/shakespeare
      charrnn info -c checkpoints/shakespeare/model.safetensors
    """
    checkpoint_path = _one_checkpoint(checkpoint, checkpoint_path, "CHECKPOINT")
    rows = api.load(checkpoint_path).describe()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {shown(value)}")  # tokens, labels and paths come from the file


@cli.command("corpora")
def corpora_():
    """List the built-in corpora: name, mode, size, what they are.

    Each is built from what your Python carries (nothing is downloaded);
    train on one with `charrnn train --corpus NAME`.
    """
    rows = api.builtin_corpora()
    click.echo(f"{'name':<18}{'mode':<8}{'characters':>12}  {'in':<14}  what")
    for r in rows:
        parts = f"{r['files']:,} files" if r["files"] else f"{r['lines']:,} lines" if r["lines"] else "one text"
        click.echo(f"{r['name']:<18}{r['mode']:<8}{r['characters']:>12,}  {parts:<14}  {r['description']}")


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True))
@_checkpoint_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="PNG file to write.  [default: RUN_DIR/loss.png]")
def plot(run_dir, checkpoint_path, out_path):
    """Plot a run's training and validation loss curves to a PNG.

    RUN_DIR (or -c RUN_DIR) is a run directory, or a model file in one
    (default: the newest run under checkpoints/). Needs matplotlib
    (pip install matplotlib).

    \b
    Examples:
      charrnn plot checkpoints/shakespeare
      charrnn plot -c checkpoints/shakespeare --out curves.png
    """
    out_path = api.plot(_one_checkpoint(run_dir, checkpoint_path, "RUN_DIR"), out_path)
    info(f"Wrote {shown(out_path)}")


# ---------------------------------------------------------------- entry point


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as one line on stderr, like every other message of the tool."""
    click.echo(f"Warning: {message}", err=True)


# Exit statuses, one rule for every command (docs/commands.md, "Exit status"): 2 when the command line is wrong
# (click's usage errors, a file named on it that does not exist, and ConfigError: an option value or a
# combination of options no run can use), 1 for every other failure, 128 + N after signal N.
USAGE_EXIT, FAILURE_EXIT = 2, 1


def main(argv=None) -> None:
    """Console entry point: library errors become one line on stderr and exit 2 (ConfigError) or 1.

    Under MPI, a rank that fails leaves at once without MPI's collective shutdown
    (which would wait for the other ranks forever); mpiexec then ends the others.
    """
    previous = signal.getsignal(signal.SIGINT)
    try:
        _main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code and api.under_mpi():
            _leave_now(code)
        raise
    except BaseException:
        if not api.under_mpi():
            raise
        import traceback
        traceback.print_exc()
        _leave_now(1)
    finally:
        if not _running.pop("interrupted", False) and previous is not None:
            try:  # a caller in this process (a test) gets its SIGINT handler back; an interrupted run keeps
                signal.signal(signal.SIGINT, previous)  # ignoring signals all the way out
            except ValueError:
                pass


def _leave_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv=None) -> None:
    api.prepare_process()
    warnings.showwarning = _warning_line
    _stop_on_interrupt()
    try:
        with errors_module.speaking(_flag):
            _run_command(argv)
    except click.exceptions.Abort:
        _quiet_from_now_on()
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        message = exc.format_message()
        exc.format_message = lambda: shown(message)  # a file name on the command line may hold a newline
        with _once_per_job():
            exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except CharRNNError as exc:
        _error(exc)
        sys.exit(USAGE_EXIT if isinstance(exc, ConfigError) else FAILURE_EXIT)
    except KeyboardInterrupt:
        _quiet_from_now_on()
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except MemoryError:
        _error(f"out of memory; {MEMORY_HINTS.get(_running.get('command'), 'try smaller inputs')}")
        sys.exit(FAILURE_EXIT)
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _error(f"{exc.strerror or exc}{where}")
        sys.exit(FAILURE_EXIT)


# The API's keywords that click's parameters name otherwise: `Model.samples(n)` is `-n/--num-samples`,
# `charrnn.load(path)` is `-c/--checkpoint`, `train(lock=False)` is `--no-lock`, ...
_PARAM_OF_KEYWORD = {"n": "num_samples", "glob": "pattern", "val": "val_file", "lock": "no_lock",
                     "path": "checkpoint_path"}


def _flag(name: str, value) -> str:
    """A setting named in a library message (errors.option), spelled as on this command line: the flag of the
    click option whose parameter it is, in the running command first (`--temp`, `--task classify`; a flag
    alone for an on/off option, the metavar for an argument), derived from the commands' own options."""
    param = _PARAM_OF_KEYWORD.get(name, name)
    running = cli.commands.get(_running.get("command") or "")
    for command in ([running] if running else []) + list(cli.commands.values()):
        for p in command.params:
            if p.name != param:
                continue
            if isinstance(p, click.Argument):
                return p.human_readable_name.strip("[]")
            flag = max(p.opts, key=len)
            return flag if p.is_flag or not errors_module.has_value(value) else f"{flag} {shlex.quote(str(value))}"
    # a setting no command takes (such as a run file's min_lr_ratio): its own name
    return name if not errors_module.has_value(value) else f"{name} {value}"


def _run_command(argv) -> None:
    # under mpiexec, join the MPI world before parsing: a rank that then fails (a missing corpus)
    # leaves MPI at once and mpiexec ends the job, where a rank gone before joining hangs the others
    api.mpi_rank()
    cli.main(args=argv, prog_name="charrnn", standalone_mode=False)


def _error(message) -> None:
    """The one line every failure prints: `Error: MESSAGE`, its untrusted parts made harmless (see shown)."""
    with _once_per_job():
        click.echo(f"Error: {shown(message)}", err=True)


@contextlib.contextmanager
def _once_per_job():
    """What the block writes to stderr, printed once for a whole MPI job when every rank fails alike
    (api.error_once); outside MPI, printed as it is written."""
    if not api.under_mpi():
        yield
        return
    real, sys.stderr = sys.stderr, io.StringIO()
    try:
        yield
    finally:
        held, sys.stderr = sys.stderr.getvalue(), real

        def say(text):  # said at once: mpiexec may end this rank as soon as another one leaves
            real.write(text)
            real.flush()
        api.error_once(held, say)


# What the out-of-memory error suggests, per command: the options that set how much a command holds.
MEMORY_HINTS = {
    "train": "try a smaller --batch-size, --hidden or --seq-len",
    "sample": "try fewer samples (-n) or a smaller --length",
    "annotate": "try a smaller --max-chars",
    "eval": "try a smaller TEXT_FILE",
    "classify": "try fewer lines at a time",
}
_running: dict = {}  # "command": the subcommand being run (the group's callback records it)


def _stop_on_interrupt() -> None:
    """SIGINT (Ctrl-C) ends a command quietly with 130: the first one raises KeyboardInterrupt, and from that
    moment on SIGINT and SIGTERM are ignored, so a second Ctrl-C right behind the first cannot interrupt the
    way out (a KeyboardInterrupt in an except clause, or in Python's own shutdown as it joins threads, which
    would print "Exception ignored" or kill the process by the signal). `train` replaces this with its
    StopRequest while it trains, and puts it back after."""
    def handle(signum, frame):
        _quiet_from_now_on()
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, handle)
    except ValueError:  # not the main thread (an embedding program): leave the signals to it
        pass


def _quiet_from_now_on() -> None:
    """Ignore SIGINT and SIGTERM from here on: the process is on its way out."""
    _running["interrupted"] = True
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
