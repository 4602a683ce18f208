"""Model names: which spellings name the same model, and its instruct variant. No heavy imports."""

from __future__ import annotations

from pathlib import Path

EMBEDDED = "embedded"
INSTRUCT_SUFFIX = "-it"


def is_embedded(name: str) -> bool:
    """``embedded``, ``embedded-it`` and the cache ids ``embedded:<dir>`` name the embedded tiny Gemma-2."""
    return name == EMBEDDED or name.startswith((EMBEDDED + ":", EMBEDDED + INSTRUCT_SUFFIX))


def canonical_model_name(name: str) -> str:
    """A name two spellings of one model share: ``google/gemma-2-2b`` and ``gemma-2-2b`` → ``gemma-2-2b``,
    ``embedded:tiny-gemma2-v1`` → ``embedded``, ``/data/models/gemma-2-2b`` → ``gemma-2-2b``."""
    if name.startswith(EMBEDDED + ":"):
        return EMBEDDED
    return Path(name.rstrip("/")).name.lower()


def base_model_name(name: str) -> str:
    """The canonical name of the base model an instruct model was tuned from (``gemma-2-2b-it`` → ``gemma-2-2b``)."""
    canonical = canonical_model_name(name)
    return canonical.removesuffix(INSTRUCT_SUFFIX)


def instruct_model_name(name: str) -> str:
    """SAE-Bench's unlearning model for SAEs trained on ``name``: its ``-it`` variant."""
    if name.startswith(EMBEDDED + ":"):
        return EMBEDDED + INSTRUCT_SUFFIX
    return name if name.endswith(INSTRUCT_SUFFIX) else name + INSTRUCT_SUFFIX
