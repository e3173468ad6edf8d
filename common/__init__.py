"""Shared infrastructure, the bottom layer: errors, the options spec, number formats, the one module that
knows the Hub (``weights``), file hashing, progress, producer/consumer threads, command-line pieces,
BatchNorm folding and running a network in batches (``network_batches``). It imports nothing from the
rest of the project."""
