"""charrnn: character-level recurrent language models on a NumPy core."""

__version__ = "0.1.0"
