"""The architecture options ``mtsae train`` offers as flags of their own (``--k``, ``--dilations``, ...).

Each field is a key of ``TrainConfig.arch_config`` shared by one or more architectures' config classes; its doc
ends by naming them in parentheses (``tests/test_cli_options.py`` checks that against the registry). Any other
architecture option goes through ``--arch-option KEY=VALUE``. Torch-free, so ``mtsae train --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class ArchFlags:
    l1_coefficient: float | None = _doc("L1 penalty weight (relu, mtsae).", default=None)
    k: int | None = _doc("active latents per token (topk, batchtopk, mtsae with activation=topk).", default=None)
    dilations: tuple[int, ...] | None = _doc("comma-separated dilation rates, e.g. 1,3,9 (mtsae).", default=None)
    cos_coefficient: float | None = _doc("adjacent-step cosine separation weight (mtsae).", default=None)
    padding: str | None = _doc("temporal padding: causal (the architecture default; the only one that may be spliced "
                               "into a model), or circular, replicate, zeros, which read later tokens (mtsae).", default=None)
    kernel_size: int | None = _doc("taps per temporal kernel (mtsae).", default=None)
    dead_tokens_threshold: int | None = _doc(
        "training tokens without firing after which a feature counts as dead (all).", default=None)
