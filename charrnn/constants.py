"""The names and limits the command line offers, as the rooms that own them define them: the choices of
its options (cells, modes, optimizers, ...), their defaults (TRAIN_DEFAULTS: config.DEFAULTS, the one table of
what a fresh run takes for an option not given), the numbers its help and messages quote, and the file names of
a run directory. Each is defined once, below; this module only gathers them for cli.py, which imports
nothing of the library but this, the API and the errors (tests/test_cli_thin.py checks).
"""

from .core.cells import CELLS
from .core.classifier import POOLS
from .core.model import DTYPES, PRECISIONS
from .core.optim import OPTIMIZERS, SCHEDULES
from .data.vocab import LEVELS
from .files.config import DEFAULTS as TRAIN_DEFAULTS, MODES, NONFINITE
from .files.corpus import TEXT_ERRORS
from .files.layout import BEST_FILE
from .tasks.registry import TASKS as _REGISTERED
from .work.annotate import MAX_CHARS

TASKS = tuple(_REGISTERED)  # the --task names, in the registry's order
TASKS_HELP = "; ".join(f"{name}: {task.summary}" for name, task in _REGISTERED.items()) + "."  # --task's help
# the tasks' own commands that the command line builds from them (`charrnn classify`): (name, help, options)
TASK_COMMANDS = tuple((task.command, task.command_lines.__doc__, task.command_options)
                      for task in _REGISTERED.values() if task.own_command)

__all__ = ["BEST_FILE", "CELLS", "DTYPES", "LEVELS", "MAX_CHARS", "MODES",
           "NONFINITE", "OPTIMIZERS", "POOLS", "PRECISIONS", "SCHEDULES", "TASKS", "TASKS_HELP", "TASK_COMMANDS",
           "TEXT_ERRORS", "TRAIN_DEFAULTS"]
