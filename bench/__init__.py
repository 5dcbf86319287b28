"""Benchmarks: each ``bench_*.py`` measures its contenders side by side in one run and prints
ratios."""

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def exit_on_bad_input(run: Callable[..., T], *args) -> T:
    """``run(*args)`` for a script's ``main``: bad input (an ``InputError``, a feature store's
    ``StoreError``) becomes one line on stderr and exit code 2, as in the ``mae-affect`` CLI."""
    from features import StoreError
    from pipeline.errors import InputError

    try:
        return run(*args)
    except (InputError, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
