"""The math core: the networks (a language model, a classifier), their gradients, the cells, the
compiled kernels and the optimizers. Pure: arrays in, arrays out; it imports nothing of charrnn but
errors.

ARCHITECTURE.md draws the layers and says what each module does.
"""
