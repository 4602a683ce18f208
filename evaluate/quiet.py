"""Keep SAE-Bench's chatter off the terminal: one progress bar per eval there, everything else in a log file.

SAE-Bench prints per-class accuracies, probe-training notes and nested tqdm
bars, and scikit-learn warns on every probe. :func:`third_party_output` sends
Python-level stdout, stderr (so tqdm bars and ``warnings``) and the root
logger's records to ``<eval folder>/sae_bench.log`` while an eval runs.
:class:`StageProgress` is the one bar the terminal keeps: SAEs done out of the
group, with tqdm's ETA, and per-SAE times measured from each SAE's first use.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterator, TextIO

from tqdm.auto import tqdm

LOG_FILENAME = "sae_bench.log"


@contextlib.contextmanager
def third_party_output(log_path: Path) -> Iterator[TextIO]:
    """Redirect stdout, stderr, warnings and root-logger records to ``log_path``; yields the terminal's stderr."""
    terminal = sys.stderr
    root = logging.getLogger()
    with open(log_path, "a", encoding="utf-8", buffering=1) as file:
        handlers, level = root.handlers[:], root.level
        root.handlers = [logging.StreamHandler(file)]  # handlers bound to the terminal would bypass the redirect
        root.setLevel(min(level, logging.INFO) if level else logging.INFO)
        logging.captureWarnings(True)  # warnings become records of the handler above, whoever shows them otherwise
        try:
            with contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
                yield terminal
        finally:
            logging.captureWarnings(False)
            root.handlers, root.level = handlers, level


class StageProgress:
    """The terminal's bar for one eval over a group of SAEs that SAE-Bench runs one after another.

    SAE-Bench takes the whole group in one call, so an SAE's time runs from its
    first ``encode``/``decode`` to the next SAE's first (or the end); work done
    once for the group before the first SAE is used (model activations, probes
    on the model) is ``shared_seconds``.
    """

    def __init__(self, name: str, releases: list[str], terminal: TextIO, enabled: bool = True):
        self.releases = releases
        self.started = time.perf_counter()
        self.first_use: dict[str, float] = {}
        self.ended: float | None = None
        self.bar = tqdm(total=len(releases), desc=f"[{name}]", unit="SAE", file=terminal, disable=not enabled,
                        dynamic_ncols=True, leave=True)

    def used(self, release: str) -> None:
        """Called on every encode/decode of ``release``'s adapter; only the first one counts."""
        if release not in self.first_use:
            self.first_use[release] = time.perf_counter()
            self.bar.n = len(self.first_use) - 1  # the SAEs before this one are done
            self.bar.set_postfix_str(release, refresh=True)

    def close(self) -> None:
        self.ended = time.perf_counter()
        self.bar.n = len(self.releases)
        self.bar.set_postfix_str("", refresh=False)
        self.bar.close()

    def seconds(self, release: str) -> float | None:
        """This SAE's own time, or None when SAE-Bench never used it (it failed or was skipped before)."""
        if release not in self.first_use:
            return None
        later = [t for t in self.first_use.values() if t > self.first_use[release]]
        end = min(later) if later else (self.ended or time.perf_counter())
        return round(end - self.first_use[release], 1)

    @property
    def shared_seconds(self) -> float:
        end = min(self.first_use.values()) if self.first_use else (self.ended or time.perf_counter())
        return round(end - self.started, 1)
