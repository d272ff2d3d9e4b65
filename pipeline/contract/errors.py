"""The one exception type a user sees.

Anything raised as `UserError` is printed by the CLI as a single line on stderr
(`bertpipe: error: ...`) with a non-zero exit code, never as a traceback. Library
code raises it where the cause is the user's input (a file, a key, a flag) and
says what to do about it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line.

    `exit_code` follows sysexits loosely: 2 for bad config or usage, 1 for a
    failed stage, 3 for a mismatch between stages (for example a vocab that does
    not match the data manifest).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(UserError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class ContractError(UserError):
    """Data written by one stage does not fit the next (vocab, lengths, schema)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=3)
