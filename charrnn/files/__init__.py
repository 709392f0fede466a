"""Files and settings: corpus text and its chunked reader, the built-in corpora, the model file format,
atomic writes, the run lock, the names inside a run directory, and the training settings.

ARCHITECTURE.md draws the layers and says what each module does.
"""
