"""The work the commands do: train, generate, score, look inside a model, draw.

ARCHITECTURE.md draws the layers and says what each module does.
"""
