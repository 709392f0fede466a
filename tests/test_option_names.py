"""Each front end names a setting in its own language (errors.option).

A library message names a setting once, by its Python name; the command line spells it as its flag
(`--temp`, `--task classify`), the API as its keyword argument (`temperature=`, `task='classify'`).
The same mistake is made through both front ends and each error is read for its own spelling, and a
scan of the package's source keeps flags out of the library's messages.
"""

import ast
import re
from pathlib import Path

import pytest

import charrnn
from charrnn import cli, errors
from charrnn.errors import CharRNNError
from tiny_runs import TINY, invoke, make_run

PACKAGE = Path(__file__).resolve().parent.parent / "charrnn"
CHARS = "abcdefghij \n"
LATIN_1 = ("déjà vu, naïve café, à la crème brûlée; " * 20).encode("latin-1")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("names") / "run"
    make_run(directory, CHARS, layers=1, hidden=8)
    return directory


@pytest.fixture(scope="module")
def latin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("latin") / "latin.txt"
    path.write_bytes(LATIN_1)
    return path


# (command line after `charrnn`, the same through the API, the flag the command line names, the API's keyword)
CASES = {
    "train --batch-size": (["train", "CORPUS", "--batch-size", 0], {"batch_size": 0},
                           "--batch-size must be at least 1", "batch_size= must be at least 1"),
    "train --lr": (["train", "CORPUS", "--lr", -1], {"lr": -1.0},
                   "learning rate --lr must be positive", "learning rate lr= must be positive"),
    "train --val-frac": (["train", "CORPUS", "--val-frac", 1], {"val_frac": 1.0},
                         "--val-frac must be in [0, 1)", "val_frac= must be in [0, 1)"),
    "train --hidden": (["train", "CORPUS", "--hidden", 0], {"hidden": 0},
                       "--hidden must be a positive integer", "hidden= must be a positive integer"),
    "train --pool": (["train", "CORPUS", "--pool", "last"], {"pool": "last"},
                     "--pool needs --task classify", "pool= needs task='classify'"),
    "train --extend-vocab": (["train", "CORPUS", "--extend-vocab"], {"extend_vocab": True},
                             "--extend-vocab extends the vocabulary of the model given by --init-from",
                             "extend_vocab= extends the vocabulary of the model given by init_from="),
    "train --on-nonfinite": (None, {"on_nonfinite": "never"},  # click's choice refuses it on the command line
                             None, "on_nonfinite= must be stop or skip"),
}
MODEL_CASES = {
    "sample --temp": (["sample", "--temp", -1], lambda m, f: m.generate(temperature=-1.0),
                      "--temp must be a finite number", "temperature= must be a finite number"),
    "sample --top-p": (["sample", "--top-p", 2], lambda m, f: m.generate(top_p=2.0),
                       "--top-p must be in (0, 1]", "top_p= must be in (0, 1]"),
    "sample --top-k": (["sample", "--top-k", 0], lambda m, f: m.generate(top_k=0),
                       "--top-k must be at least 1", "top_k= must be at least 1"),
    "sample --length": (["sample", "--length", 0], lambda m, f: m.generate(length=0),
                        "--length must be at least 1", "length= must be at least 1"),
    "sample -n": (["sample", "-n", 0], lambda m, f: m.samples(0),
                  "--num-samples must be from 1", "n= must be from 1"),
    "sample --seed": (["sample", "--seed", -1], lambda m, f: m.generate(seed=-1),
                      "--seed must be an integer", "seed= must be an integer"),
    "annotate --top-k": (["annotate", "TEXT", "--top-k", 0], lambda m, f: m.annotate("abc", top_k=0),
                         "--top-k must be at least 1", "top_k= must be at least 1"),
    "annotate --max-chars": (["annotate", "TEXT", "--max-chars", 0], lambda m, f: m.annotate("abc", max_chars=0),
                             "--max-chars must be at least 1", "max_chars= must be at least 1"),
    "classify a language model": (["classify", "TEXT"], lambda m, f: m.classify(["abc"]),
                                  "train one with --task classify", "train one with task='classify'"),
    "eval --encoding": (["eval", "LATIN"], lambda m, f: m.score_file(f),
                        "re-run with --encoding ", "re-run with encoding='"),
}


def _one_error(result) -> str:
    lines = result.stderr.splitlines()
    assert result.exit_code in (1, 2) and result.stdout == "" and len(lines) == 1, result
    assert lines[0].startswith("Error: ") and "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_training_setting_is_named_as_a_flag_on_the_command_line_and_a_keyword_in_the_api(
        case, corpus_file, tmp_path):
    args, options, flag, keyword = CASES[case]
    out = tmp_path / "out"
    if args is not None:
        args = [corpus_file if a == "CORPUS" else a for a in args]
        line = _one_error(invoke([*args[:2], *TINY, "--max-steps", 1, "--out", out, *args[2:]]))  # the last word wins
        assert flag in line and keyword not in line, line
    with pytest.raises(CharRNNError) as caught:
        charrnn.train(str(corpus_file), out=str(out), max_steps=1, **options)
    assert keyword in str(caught.value) and (flag is None or flag not in str(caught.value)), caught.value
    assert "--" not in str(caught.value)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_a_model_setting_is_named_as_a_flag_on_the_command_line_and_a_keyword_in_the_api(
        case, run, latin_file, tmp_path):
    args, call, flag, keyword = MODEL_CASES[case]
    text = tmp_path / "text.txt"
    text.write_text("abc abc\n")
    args = [{"TEXT": text, "LATIN": latin_file}.get(a, a) for a in args]
    line = _one_error(invoke([*args, "-c", run] if args[0] != "annotate" else
                             [*args, "-c", run, "--out", tmp_path / "page.html"]))
    assert flag in line and keyword not in line, line
    with pytest.raises(CharRNNError) as caught:
        call(charrnn.load(run), str(latin_file))
    assert keyword in str(caught.value) and flag not in str(caught.value), caught.value
    assert "--" not in str(caught.value)


@pytest.mark.parametrize("args, flag", [(["--hidden", 0], "--hidden"), (["--val-frac", 2], "--val-frac"),
                                        (["--pool", "last"], "--pool")])
def test_a_bad_value_is_refused_before_anything_is_said_about_the_budget(corpus_file, tmp_path, args, flag):
    # no budget given: the five-minute default is announced only once the options are known to be good
    line = _one_error(invoke(["train", corpus_file, *args, "--out", tmp_path / "out"]))
    assert line.startswith(f"Error: {flag} ") and not (tmp_path / "out").exists()


def test_the_command_line_spells_each_setting_as_its_commands_flag():
    # derived from click's own options: the running command's flag, a value after it, a flag alone for on/off
    with errors.speaking(cli._flag):
        assert errors.option("temperature") == "--temp"
        assert errors.option("task", "classify") == "--task classify"
        assert errors.option("n") == "--num-samples" and errors.option("path") == "--checkpoint"
        assert errors.option("lock", False) == "--no-lock" and errors.option("extend_vocab") == "--extend-vocab"
        assert errors.option("out", "my runs/a") == "--out 'my runs/a'"  # as a shell reads it back
        assert errors.option("corpus_file") == "CORPUS"                  # an argument: its metavar
        assert errors.option("min_lr_ratio") == "min_lr_ratio"          # no command takes it: no made-up flag
    assert errors.option("temperature") == "temperature=" and errors.option("task", "classify") == "task='classify'"
    assert errors.option("lock", False) == "lock=False"


# ---------------------------------------------------------------- the library speaks no front end's language

FLAG = re.compile(r"--([a-z]|$)")  # $: a flag made in an f-string, f"--{name}"
# a command spelled out in full (`charrnn train --help`) names the command line on purpose
COMMAND = re.compile(r"`?charrnn [a-z]+( +-{1,2}[a-z][\w-]*)*`?")


def _message_literals(tree):
    """The string constants of a module but its docstrings and bare strings (comments in effect)."""
    bare = {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare:
            yield node.lineno, node.value


def _keywords():
    """Every setting's Python name: the parameters of click's commands and the API's other spellings."""
    names = {p.name for command in cli.cli.commands.values() for p in command.params} | set(cli._PARAM_OF_KEYWORD)
    return {name for name in names if len(name) > 1}


def test_no_library_message_names_a_flag_or_a_keyword_literally():
    keyword = re.compile(r"\b(%s)=['\"\w]" % "|".join(sorted(_keywords())))
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("cli.py", "progress.py"):  # the command line itself, which draws in progress.py
            continue
        for line, text in _message_literals(ast.parse(path.read_text(encoding="utf-8"))):
            text = COMMAND.sub("", text)
            if path.name == "page.py":  # the page's style sheet: CSS custom properties, --ink and the like
                text = re.sub(r"var\(--[\w-]+\)|--[\w-]+:", "", text)
            if path.name == "report.py":  # info's torch.nn row: torch's own keyword, torch.nn.LSTM(bidirectional=True)
                text = text.replace("(bidirectional=True)", "")
            if FLAG.search(text) or keyword.search(text):
                found.append(f"{path.name}:{line}: {text[:80]!r}")
    assert not found, "name a setting with errors.option, not as one front end spells it:\n" + "\n".join(found)
