"""Errors the user can fix. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input: the message says what was wrong and what is accepted."""


class NotBuiltError(UserError):
    """A command or option that the toolkit names but does not implement yet."""
