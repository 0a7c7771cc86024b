"""Errors for bad input data: each message names the file, key or value and what was expected."""


class DataError(ValueError):
    """Input data (a file, a key, a value, a destination) is not what raylift expects."""
