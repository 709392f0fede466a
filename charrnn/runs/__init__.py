"""A run directory: preparing, starting, resuming, saving and logging a run, and finding and loading
the models it holds.

ARCHITECTURE.md draws the layers and says what each module does.
"""
