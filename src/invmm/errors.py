"""Errors a user can act on. The CLI turns them into a message and exit code 2."""


class InvMMInputError(ValueError):
    """Bad input from the user: a path, a file, a model folder or an option. The message says what to do."""
