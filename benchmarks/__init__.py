"""memif_aio benchmarks: ``python -m benchmarks --help``."""
