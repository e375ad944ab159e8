"""The errors a user can fix, in one torch-free module: the CLI turns each into a one-line message
(no traceback) without importing the training stack to recognise it."""


class ConfigError(ValueError):
    """Invalid config; the message names the key, what was wrong and what is allowed."""


class DataError(RuntimeError):
    """Bad or missing dataset: the message names the file or config key and how to fix it."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


class TableError(ValueError):
    """An input table is missing or does not follow the contract; the message names the file."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, TableError)
