"""Name → SAE class registry.

Every architecture module in :mod:`mtsae.train.archs` decorates its class with
``@register("name")``. The name is what presets, checkpoints (``cfg.json``) and
the CLI use, so it must be unique and stable: registering a name twice is a bug
and raises at import time instead of silently shadowing the first class.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from mtsae.errors import MtsaeError

if TYPE_CHECKING:
    from mtsae.train.base import SparseAutoencoder

_T = TypeVar("_T", bound="type[SparseAutoencoder]")

_REGISTRY: dict[str, type[SparseAutoencoder]] = {}


def register(name: str) -> Callable[[_T], _T]:
    """Class decorator: register an SAE class under ``name`` and set ``cls.architecture``.

    Raises ``ValueError`` when ``name`` is already taken (a programming error,
    not a user mistake, hence not ``MtsaeError``).
    """

    def decorator(cls: _T) -> _T:
        if name in _REGISTRY:
            raise ValueError(
                f"SAE architecture {name!r} is already registered by "
                f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}"
            )
        cls.architecture = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_builtin_architectures() -> None:
    # Imported lazily: the arch modules import this module, so importing them at
    # the top would be circular.
    importlib.import_module("mtsae.train.archs")


def builtin_architecture_names() -> tuple[str, ...]:
    """Sorted names of the built-in architectures without importing them (and torch): by the package's
    convention each lives in ``archs/<name>.py`` and registers as ``<name>``. For help texts."""
    spec = importlib.util.find_spec("mtsae.train.archs")
    return tuple(sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)))


def architecture_names() -> tuple[str, ...]:
    """Sorted names of every registered architecture (built-ins included)."""
    _load_builtin_architectures()
    return tuple(sorted(_REGISTRY))


def get_architecture(name: str) -> type[SparseAutoencoder]:
    """The SAE class registered under ``name``; ``MtsaeError`` if there is none."""
    _load_builtin_architectures()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise MtsaeError(
            f"unknown SAE architecture {name!r}; choose one of: {known}"
        ) from None


def create_sae(name: str, **config: Any) -> SparseAutoencoder:
    """Build a freshly initialised SAE: ``create_sae("topk", d_in=2304, d_sae=16384, k=64)``."""
    cls = get_architecture(name)
    return cls(cls.config_class.from_dict(config))
