"""Is a value given in a config file or on the command line of the kind its setting takes, and if a name is
not one of the choices, which one was meant?"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'topk'?)`` for a near miss (any case, a typo), else ``""``: for an error line."""
    choices = list(choices)
    by_case = [c for c in choices if c.lower() == str(value).lower()]
    close = by_case or difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def same_kind(value: Any, example: Any) -> bool:
    """Whether ``value`` has the kind of ``example`` (a setting's default).

    bool only for bool (it is an int to Python), int for int, int or float for
    float, list or tuple for either, else the example's own type.
    """
    if isinstance(example, bool) or isinstance(value, bool):
        return isinstance(example, bool) and isinstance(value, bool)
    if isinstance(example, int):
        return isinstance(value, int)
    if isinstance(example, float):
        return isinstance(value, (int, float))
    if isinstance(example, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(example))
