"""Errors that mean "the user gave us something we cannot use".

The CLI turns an :class:`InputError` into one line on stderr and exit code 2; anything else is a bug
(exit code 1). Messages name the file, line or key at fault and say what to do. Scripts outside the
CLI (``bench/``) get the same behaviour from :func:`exit_on_input_error`.
"""

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class InputError(Exception):
    """Bad user input: a malformed file, a missing folder, an incompatible checkpoint or store."""


def exit_on_input_error(run: Callable[..., T], *args) -> T:
    """``run(*args)``; an :class:`InputError` becomes one line on stderr and exit code 2."""
    try:
        return run(*args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
