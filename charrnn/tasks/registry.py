"""The registry of tasks: each `--task` name and the Task that trains and reads its models (see base.py).

Adding a task: one module in this folder with a `Task` subclass, and one line in TASKS.
"""

from ..errors import CheckpointError, ConfigError, option
from .base import Task
from .classify import Classifier
from .lm import LanguageModel
from .tag import Tagger

TASKS = {
    "lm": LanguageModel(),     # a language model: predict each next token
    "classify": Classifier(),  # a classifier of label<TAB>text lines
    "tag": Tagger(),           # a tagger of each token (JSON Lines or CoNLL columns)
}


def get(name) -> Task:
    """The task registered as name; ConfigError naming the choices for any other value."""
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        names = list(TASKS)
        choices = " or ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " or " + names[-1]
        raise ConfigError(f"{option('task')} must be {choices}, got {name!r:.40}")
    return task


def offering(method: str) -> Task:
    """The first registered task whose models offer `method` (Task.methods), for messages."""
    return next(task for task in TASKS.values() if method in task.methods)


def commanding(command: str) -> Task:
    """The task whose own command is `command` (Task.command); ConfigError for any other."""
    task = next((task for task in TASKS.values() if task.command == command and task.own_command), None)
    if task is None:
        raise ConfigError(f"no task has the command {command!r:.40}")
    return task


def of_model(config, meta: dict, where: str) -> Task:
    """The task of a model file (config, meta: its model settings and metadata), by the name its metadata
    records (one without: the classifier's if its model has labels, else the language model's), once its
    entries for that task are checked (Task.check_metadata); CheckpointError names what does not fit."""
    data = meta.get("data")
    name = data.get("task") if isinstance(data, dict) else None
    if name is None:
        name = "classify" if config.classes else "lm"
    try:
        task = get(name)
    except ConfigError:
        raise CheckpointError(f"{where}: unknown task {name!r:.40}") from None
    task.check_metadata(meta, config, where)
    return task

