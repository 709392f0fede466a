"""Exception types raised by the library.

Every message is written for the user: the CLI prints it as one line,
`Error: <message>`, and exits non-zero. Library code never prints or exits.
"""


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
