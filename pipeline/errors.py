"""Errors that mean "the user gave us something we cannot use".

The CLI turns an :class:`InputError` into one line on stderr and exit code 2; anything else is a bug
(exit code 1). Messages name the file, line or key at fault and say what to do. The scripts of
``bench/`` do the same (``bench.exit_on_bad_input``).
"""


class InputError(Exception):
    """Bad user input: a malformed file, a missing folder, an incompatible checkpoint or store."""
