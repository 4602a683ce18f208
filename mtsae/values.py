"""Is a value given in a config file or on the command line of the kind its setting takes?"""

from __future__ import annotations

from typing import Any


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
