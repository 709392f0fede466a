"""charrnn: character-level recurrent language models on a NumPy core.

    import charrnn
    model = charrnn.load("checkpoints/shakespeare")
    print(model.generate(prime="ROMEO:", length=300, temperature=0.8, seed=1))

See charrnn/api.py (and docs/api.md).
"""

__version__ = "0.1.0"

from .api import Model, load, train  # noqa: E402  (after __version__, which cli.py and setup read)
from .errors import CharRNNError, CheckpointError, ConfigError, CorpusError, VocabError  # noqa: E402

__all__ = ["Model", "load", "train", "CharRNNError", "CheckpointError", "ConfigError", "CorpusError",
           "VocabError"]
