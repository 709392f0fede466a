"""Tokens and ids: the vocabulary, batches and masks, and the indexes over stored ids.

ARCHITECTURE.md draws the layers and says what each module does.
"""
