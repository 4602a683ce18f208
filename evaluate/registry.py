"""Name → eval spec: what mtsae knows about one SAE-Bench eval, in one place.

Every eval is one :class:`EvalSpec`, registered with :func:`register` (the
built-in four in :mod:`mtsae.evaluate.sae_bench_evals`). Every other place
reads the specs: the settings, ``--evals`` and the TOML tables
(:mod:`~mtsae.evaluate.config`), the run (which model, the forget corpus, the
causality check: :mod:`~mtsae.evaluate.run`), the offline patches
(:mod:`~mtsae.evaluate.patches`), the outcomes (:mod:`~mtsae.evaluate.evals`)
and the report's table, guardrails and caveats (:mod:`~mtsae.evaluate.report`).
Adding an eval is one spec; docs/architecture.md says how.

No heavy imports here: the CLI reads the names at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from mtsae.errors import MtsaeError

if TYPE_CHECKING:
    from mtsae.evaluate.evals import Job

Settings = dict[str, Any]
PROFILE_FALLBACK = {"demo": "tiny"}
"""A profile an eval gives no settings of takes these (the demo is tiny, sparse probing aside)."""


def with_common(common: Settings, own: Settings) -> Settings:
    """SAE-Bench keyword arguments: the ``[common]`` settings, then the eval's own."""
    return {**common, **own}


def load_class(path: str) -> type:
    """``"package.module:Name"`` imported (lazily: sae_bench imports take seconds)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ReportColumn:
    """One column of the report's metric table."""

    header: str
    metric: str  # a headline metric's name (the part after the dot)
    status_when_missing: bool = True  # without an ok result, show its status (not_scorable, failed), else "–"


@dataclass(frozen=True)
class EvalSpec:
    """One SAE-Bench eval. Only ``name``, ``run``, ``headline`` and ``settings`` are required."""

    name: str  # --evals name, TOML table, <out>/<name>/ folder, summary.json rows
    run: Callable[[Job], None]  # calls SAE-Bench on job.targets, inside the patches it needs
    headline: tuple[str, ...]  # "category.metric" of SAE-Bench's eval_result_metrics kept in summary.json
    settings: dict[str, Settings]  # SAE-Bench keyword arguments per profile: "standard", "tiny" (+ "demo")
    config_class: str | None = None  # "module:Class" of its SAE-Bench config: the keys a TOML table may set
    kwargs: Callable[[Settings, Settings], Settings] = with_common  # (common, own) -> SAE-Bench kwargs
    context_setting: tuple[str, int] | None = None  # (key, SAE-Bench default) of its longest sequence
    splices: bool = False  # puts decode(encode(resid)) back into the model: refused for non-causal SAEs
    instruct_model: bool = False  # runs on the -it variant of the SAEs' model
    forget_corpus: bool = False  # needs the WMDP bio forget corpus at SAE-Bench's relative path
    in_demo: bool = True  # part of the demo experiment (`mtsae experiment embedded`)
    datasets: tuple[str, ...] = ()  # hub datasets it loads: an offline mirror must hold them
    model_modules: tuple[str, ...] = ()  # SAE-Bench modules whose HookedTransformer goes offline
    dataset_modules: tuple[str, ...] = ()  # modules whose load_dataset reads the mirror offline
    mirror_rows: Callable[[Settings], int] | None = None  # rows per class the embedded mirror needs
    not_scorable: Callable[[Job], str | None] | None = None  # no result written: why the score is undefined
    columns: tuple[ReportColumn, ...] = ()  # default: one column, the eval's name, its first headline metric
    column_note: str | None = None  # the table's note for columns that do not show a status
    kind: Literal["downstream", "reconstruction"] = "downstream"  # where its columns and flags go
    guardrail: Callable[[dict[str, float]], str | None] | None = None  # a flag when its metrics say "broken"

    def profile_settings(self, profile: str) -> Settings:
        return dict(self.settings[profile if profile in self.settings else PROFILE_FALLBACK[profile]])

    def settable_keys(self) -> tuple[str, ...]:
        """Keys its TOML table may set: its SAE-Bench config's fields, else the keys its profiles set."""
        if self.config_class is not None:
            import dataclasses

            return tuple(f.name for f in dataclasses.fields(load_class(self.config_class)) if f.name != "model_name")
        return tuple(dict.fromkeys(k for values in self.settings.values() for k in values))

    def default_value(self, key: str) -> Any:
        """SAE-Bench's default of ``key`` (the standard profile's without a config class), or None."""
        if self.config_class is not None:
            return getattr(load_class(self.config_class)(), key, None)  # pydantic dataclasses
        merged: Settings = {}
        for profile in ("tiny", "standard"):
            merged.update(self.settings.get(profile, {}))
        return merged.get(key)

    def report_columns(self) -> tuple[ReportColumn, ...]:
        return self.columns or (ReportColumn(self.name, self.headline[0].split(".")[-1]),)


_REGISTRY: dict[str, EvalSpec] = {}


def register(spec: EvalSpec) -> EvalSpec:
    """Add ``spec``; a name registered twice or a spec without standard and tiny settings is a bug (ValueError)."""
    _load_builtins()
    if spec.name in _REGISTRY or spec.name == "common":
        raise ValueError(f"eval {spec.name!r} is already registered (or reserved)")
    if not {"standard", "tiny"} <= set(spec.settings):
        raise ValueError(f"eval {spec.name!r} needs settings for the standard and tiny profiles")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an eval registered with :func:`register` (tests register throwaway evals)."""
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered eval, in registration order (the built-ins first)."""
    _load_builtins()
    return tuple(_REGISTRY)


def specs() -> tuple[EvalSpec, ...]:
    _load_builtins()
    return tuple(_REGISTRY.values())


def get(name: str) -> EvalSpec:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MtsaeError(f"unknown eval {name!r}; choose from {', '.join(_REGISTRY)}") from None


_loading = False


def _load_builtins() -> None:
    """Import the built-in specs once (they register themselves; imported lazily, as they import this module)."""
    global _loading
    if _loading:
        return
    _loading = True
    try:
        importlib.import_module("mtsae.evaluate.sae_bench_evals")
    except BaseException:
        _loading = False
        raise
