"""One step: a batch's row blocks on threads and MPI ranks, forward-only use (sampling and scoring
steps), and the process settings (BLAS threads, the allocator).

ARCHITECTURE.md draws the layers and says what each module does.
"""
