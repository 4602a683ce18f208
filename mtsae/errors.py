"""The one exception type for user mistakes.

Anything raised as `MtsaeError` is printed by the CLI as a single line
(``error: …``) with a non-zero exit code and no traceback; everything else is
a bug and keeps its traceback.
"""


class MtsaeError(Exception):
    """A problem the user can fix: bad option, missing file, incompatible cache."""
