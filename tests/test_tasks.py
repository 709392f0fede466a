"""Tasks as plug-ins (charrnn/tasks/): the registry, the contract every task keeps, and a third task that
trains end to end through charrnn.train with only its own class and a registration line."""

import json
import math

import numpy as np
import pytest

import charrnn
from charrnn.tasks import registry as tasks
from charrnn.core import model
from charrnn.data import batches
from charrnn.errors import CheckpointError, ConfigError
from charrnn.files import corpus
from charrnn.step import inference, parallel
from charrnn.runs import models
from charrnn.tasks.base import Batch, Task

from reference import naive_forward, naive_loss
from charrnn import cli
from tiny_runs import invoke, read_log

# ---------------------------------------------------------------- the registry


def test_the_registry_holds_the_language_model_the_classifier_and_the_tagger_by_their_names():
    assert list(tasks.TASKS) == ["lm", "classify", "tag"]
    for name, task in tasks.TASKS.items():
        assert tasks.get(name) is task and task.name == name


@pytest.mark.parametrize("name", ["ner", "", "LM", None, 3])
def test_an_unknown_task_is_a_config_error_naming_the_choices(name):
    with pytest.raises(ConfigError, match=r"must be lm, classify or tag, got "):
        tasks.get(name)


def test_a_model_file_names_its_task_and_an_unknown_one_is_a_damaged_file():
    lm_config = model.ModelConfig(vocab_size=5)
    assert tasks.of_model(lm_config, {"data": {"task": "lm"}}, "f") is tasks.get("lm")
    assert tasks.of_model(lm_config, {}, "f") is tasks.get("lm")  # a file without a task: its model says
    two = model.ModelConfig(vocab_size=5, classes=2)
    meta = {"data": {"task": "classify"}, "labels": ["a", "b"]}
    assert tasks.of_model(two, meta, "f") is tasks.get("classify")
    for config, meta, message in ((lm_config, {"data": {"task": "zzz"}}, "unknown task 'zzz'"),
                                  (two, {"data": {"task": "lm"}}, "a language model's file, but its model has 2"),
                                  (two, {"data": {"task": "classify"}, "labels": ["a"]}, "list of 2 distinct")):
        with pytest.raises(CheckpointError, match=message):
            tasks.of_model(config, meta, "f")


# ---------------------------------------------------------------- the contract

REQUIRED = ("batch", "loss_and_grads", "validation_loss")


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_each_registered_task_keeps_the_contract(name):
    task = tasks.get(name)
    assert isinstance(task, Task)
    for method in REQUIRED + (() if task.chunked else ("read_lines", "store")):  # what the base class cannot know
        assert getattr(type(task), method) is not getattr(Task, method), f"{name} does not define {method}"
    assert task.noun and task.summary and task.unit and task.command in task.methods
    assert task.modes and set(task.modes) <= {"stream", "lines"} and set(task.levels) <= {"char", "word"}
    assert isinstance(task.model_fields(), dict)
    # every method an api.Model offers belongs to a task that `tasks.offering` finds (evaluate: several)
    for method in task.methods:
        assert method in tasks.offering(method).methods


# ---------------------------------------------------------------- a third task, registered by a test


class CaseTask(Task):
    """Tag every character of a line with its case (1 upper, 0 otherwise): many-to-many with equal lengths,
    a head of 2 tags at every step. Written against the contract alone, as a tagger would be; the corpus
    engine reads its lines (the tags come from the tokens themselves)."""
    name = "case"
    noun = "a case tagger"
    unit = "token"
    modes = ("lines",)
    levels = ("char",)
    methods = ("tag",)
    command = "case"
    chunked = True  # the corpus engine reads its lines

    def model_fields(self, data=None):
        return {"classes": 2}

    def check_metadata(self, meta, config, where):
        if config.classes != 2:
            raise CheckpointError(f"{where}: a case tagger has 2 tags")

    @staticmethod
    def tags(vocab, x, mask):
        upper = np.array([len(t) == 1 and t.isupper() for t in vocab.tokens])
        return np.where(mask, upper[x], 0).astype(np.int64)

    def batch(self, run, step):
        epoch, index = divmod(step, run.steps_per_epoch)
        order = run.data.epoch_order(run, epoch)
        x, _, mask = batches.line_batch(run.train_ids, run.train_offsets, order[index], run.vocab.bos, run.vocab.eos)
        return Batch(x, self.tags(run.vocab, x, mask), mask, True)

    def loss_and_grads(self, run, batch, state, rngs, group):
        count = int(np.count_nonzero(batch.mask))
        nll, grads, _ = parallel.loss_and_grads(run.params, run.config, batch.inputs, batch.targets, batch.mask,
                                                None, count=count, rngs=rngs, parts=run.tconfig.threads)
        return nll / count, grads, None, count

    def command_lines(self, model, path, errors, encoding, shown):
        """Print each line's characters with their most likely tag (1 upper, 0 otherwise)."""
        lines = model.read_lines(path, errors, encoding)
        ids, offsets = corpus.encode_lines(model.vocab, lines)
        x, _, mask = batches.line_batch(ids, offsets, np.arange(len(lines)), model.vocab.bos, model.vocab.eos)
        logits = model_logits(model.params, model.config, x)
        for line, tags in zip(lines, logits.argmax(axis=2)):
            yield line + "\t" + "".join(str(t) for t in tags[1 : len(line) + 1]) + "\n"  # each character's tag

    def validation_loss(self, run):
        n = len(run.val_offsets) - 1
        if n < 1:
            return math.nan
        x, _, mask = batches.line_batch(run.val_ids, run.val_offsets, np.arange(n), run.vocab.bos, run.vocab.eos)
        nll, count, _ = inference.score_chunk(model.prepare(run.params, run.config), x,
                                              self.tags(run.vocab, x, mask), mask)
        return nll / count


def model_logits(params, config, x):
    """(B, T, 2) tag scores of a case tagger, forward only."""
    _, _, cache = model.forward(params, config, x, np.zeros_like(x), want_logits=True)
    return cache["logits"]


def test_a_third_task_trains_end_to_end_with_only_its_module_and_a_registration_line(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "case", CaseTask())  # the registration line
    rng = np.random.default_rng(0)
    words = ["Abc", "dEf", "GHi", "jkL", "mno", "PQR"]
    text = "\n".join(" ".join(rng.choice(words, 4)) for _ in range(120)) + "\n"
    (tmp_path / "words.txt").write_text(text)
    out = charrnn.train(str(tmp_path / "words.txt"), str(tmp_path / "run"), task="case", layers=1, hidden=16,
                        embed=8, batch_size=8, seq_len=16, lr=0.05, max_steps=60, eval_every=20, seed=1)
    log = read_log(out)
    evals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0] < math.log(2) + 0.5  # it learns the tags
    loaded = charrnn.load(out + "/model.safetensors")
    assert loaded.task is tasks.TASKS["case"] and loaded.config.classes == 2
    assert json.loads(json.dumps(loaded.meta["data"]))["task"] == "case"
    # the last logged validation loss is the naive reference's mean NLL of the tags of the held-out lines
    ids, offsets = models.load_heldout(loaded.path, True)
    vocab = loaded.vocab
    x, _, mask = batches.line_batch(ids, offsets, np.arange(len(offsets) - 1), vocab.bos, vocab.eos)
    # the naive forward has a head row per token: the tags' two rows, and the others never chosen
    V, H = vocab.size, loaded.config.hidden
    params = {**loaded.params,
              "head.weight": np.concatenate([loaded.params["head.weight"], np.zeros((V - 2, H))]),
              "head.bias": np.concatenate([loaded.params["head.bias"], np.full(V - 2, -1e30)])}
    logits, _ = naive_forward(params, loaded.config, x)
    assert evals[-1] == pytest.approx(naive_loss(logits, CaseTask.tags(vocab, x, mask), mask), rel=1e-5)
    # what the task does not offer, its model refuses in words
    with pytest.raises(ConfigError, match="this model is a case tagger, not a language model"):
        loaded.generate("a")
    with pytest.raises(ConfigError, match="this model is a case tagger, not a classifier"):
        loaded.classify("a")
    # its own command, through the API and as the command line builds it from the task
    (tmp_path / "in.txt").write_text("Abc dEf\nmno\n")
    lines = "".join(loaded.run_command("case", tmp_path / "in.txt")).splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Abc dEf", "mno"]
    assert lines[1] == "mno\t000" and len(lines[0].split("\t")[1]) == 7
    cli._task_command("case", CaseTask.command_lines.__doc__, CaseTask.command_options)
    try:
        result = invoke(["case", tmp_path / "in.txt", "-c", out])
        assert result.exit_code == 0 and result.stdout.splitlines() == lines
        assert "most likely tag" in invoke(["case", "--help"]).stdout
    finally:
        cli.cli.commands.pop("case")


# ---------------------------------------------------------------- no branch on the task outside the tasks

PACKAGE = __import__("pathlib").Path(charrnn.__file__).parent
TASK_NAMES = {"lm", "classify", "tag"}
# the fields only one task has: the classifier's model options (ModelConfig's classes,
# bidirectional, pool), and the label arrays a Run held before tasks
TASK_FIELDS = {"classes", "bidirectional", "pool", "train_labels", "val_labels"}


def task_branches(source: str) -> list:
    """(line, what) of every comparison with a task's name and every read of a task's own field in source."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                names = {item.value for item in items if isinstance(item, ast.Constant)} & TASK_NAMES
                found += [(node.lineno, f"compares with {name!r}") for name in sorted(names)]
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in TASK_FIELDS:
            found.append((node.lineno, f"reads .{node.attr}"))
    return sorted(found)


def test_the_scan_finds_branches_on_the_task():
    planted = ("if tconfig.task == 'classify':\n    pass\n"
               "x = 'lm' if mode in ('lm', 'other') else run.config.classes\n"
               "y = model.classes\nz = run.train_labels[0]\nw = config.pool\nv = config.bidirectional\n")
    assert task_branches(planted) == [(1, "compares with 'classify'"), (3, "compares with 'lm'"),
                                      (3, "reads .classes"), (4, "reads .classes"), (5, "reads .train_labels"),
                                      (6, "reads .pool"), (7, "reads .bidirectional")]
    assert task_branches("task = registry.get(name)\nrun.task.batch(run, step)\nx = 'lm'\n") == []


def test_nothing_outside_the_tasks_and_the_math_core_branches_on_the_task():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = path.relative_to(PACKAGE).parts[0]
        if folder in ("tasks", "core"):
            continue
        found += [f"{path.relative_to(PACKAGE)}:{line}: {what}"
                  for line, what in task_branches(path.read_text(encoding="utf-8"))]
    assert found == []
