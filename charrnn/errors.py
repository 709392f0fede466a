"""Exception types raised by the library.

Every message is written for the user: the CLI prints it as one line,
`Error: <message>`, and exits non-zero. Library code never prints or exits.
"""

import contextlib
import contextvars


class CharRNNError(Exception):
    """Base class of every error charrnn reports to a user."""


class ConfigError(CharRNNError):
    """An option or model configuration is invalid."""


class CorpusError(CharRNNError):
    """A corpus file cannot be read or is unusable for training."""


class VocabError(CharRNNError):
    """Text cannot be encoded with a vocabulary, or a vocabulary is malformed."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, malformed, incompatible or cannot be written."""


class TrainingError(CharRNNError):
    """Training cannot continue (for example, the loss became non-finite)."""


class LockError(CharRNNError):
    """A run directory cannot be locked for writing."""


class RunLockedError(LockError):
    """Another process is writing the run directory (it holds the run's lock)."""


# ---------------------------------------------------------------- naming a setting in a message
#
# A message about a setting names it once, by its Python name (the API's keyword, such as "temperature"),
# through `option`; the front end in effect spells it: the API as the keyword argument (`temperature=`,
# `task='classify'`), the command line as its flag (`--temp`, `--task classify`: cli.py sets its spelling,
# derived from click's options, with `speaking` while a command runs). So no library message speaks one
# front end's language to the other's user.

_spelling: contextvars.ContextVar = contextvars.ContextVar("charrnn_spelling", default=None)
_NO_VALUE = object()


def keyword(name: str, value=_NO_VALUE) -> str:
    """The API's spelling of a setting: its keyword argument, `name=` or `name=<value as Python writes it>`."""
    return f"{name}=" if value is _NO_VALUE else f"{name}={value!r}"


def option(name: str, value=_NO_VALUE) -> str:
    """A setting (by its Python name), with a value or not, spelled for the front end in effect: the API's
    keyword argument unless a front end has set its own spelling (`speaking`)."""
    spell = _spelling.get()
    return spell(name, value) if spell is not None else keyword(name, value)


def has_value(value) -> bool:
    """Whether `option` was given a value (a front end's spelling function asks)."""
    return value is not _NO_VALUE


@contextlib.contextmanager
def speaking(spell):
    """While the block runs, `option` spells settings with spell(name, value) (value may be absent: see
    has_value); the command line's flags, for one."""
    token = _spelling.set(spell)
    try:
        yield
    finally:
        _spelling.reset(token)
