"""Model names: which spellings name the same model, and its instruct variant. No heavy imports."""

from __future__ import annotations

from pathlib import Path

EMBEDDED = "embedded"
WORLD = "world"  # the trained world LM (mtsae.harvest.world_assets)
BUILTIN = (EMBEDDED, WORLD)
INSTRUCT_SUFFIX = "-it"


def is_embedded(name: str) -> bool:
    """``embedded``, ``embedded-it`` and the cache ids ``embedded:<dir>`` name the embedded tiny Gemma-2."""
    return _is(EMBEDDED, name)


def is_world(name: str) -> bool:
    """``world``, ``world-it`` and the cache ids ``world:<dir>`` name the shipped world LM."""
    return _is(WORLD, name)


def is_builtin(name: str) -> bool:
    """A model that ships with mtsae (embedded or world): offline, tiny, with its own mirror."""
    return any(_is(b, name) for b in BUILTIN)


def builtin_base(name: str) -> str | None:
    """``embedded`` or ``world`` for any spelling of a built-in model, else None."""
    return next((b for b in BUILTIN if _is(b, name)), None)


def _is(builtin: str, name: str) -> bool:
    return name == builtin or name.startswith((builtin + ":", builtin + INSTRUCT_SUFFIX))


def canonical_model_name(name: str) -> str:
    """A name two spellings of one model share: ``google/gemma-2-2b`` and ``gemma-2-2b`` → ``gemma-2-2b``,
    ``embedded:tiny-gemma2-v1`` → ``embedded``, ``/data/models/gemma-2-2b`` → ``gemma-2-2b``."""
    base = builtin_base(name)
    if base and name.startswith(base + ":"):
        return base
    return Path(name.rstrip("/")).name.lower()


def base_model_name(name: str) -> str:
    """The canonical name of the base model an instruct model was tuned from (``gemma-2-2b-it`` → ``gemma-2-2b``)."""
    canonical = canonical_model_name(name)
    return canonical.removesuffix(INSTRUCT_SUFFIX)


def instruct_model_name(name: str) -> str:
    """SAE-Bench's unlearning model for SAEs trained on ``name``: its ``-it`` variant."""
    base = builtin_base(name)
    if base and name.startswith(base + ":"):
        return base + INSTRUCT_SUFFIX
    return name if name.endswith(INSTRUCT_SUFFIX) else name + INSTRUCT_SUFFIX
