"""Training settings: one dataclass, each field documented once (that text is ``mtsae train --help``).

Precedence, lowest first: built-in defaults < ``preset`` (run0–run3 fill
``arch``, ``arch_config``, ``layer``, ``d_sae``, ``lr``, ``window``) < the TOML
file < command-line options. Fields a preset may fill are ``None`` until
``__post_init__`` resolves them, so ``TrainConfig(preset="run2", d_sae=512)``
means "run2, but with 512 features". ``arch_config`` is merged key by key over
the preset's.

A TOML file holds the same names at top level plus an ``[arch_config]`` table::

    cache = "caches/demo"
    out = "runs/demo-run2"
    preset = "run2"
    d_sae = 512
    train_tokens = 4_000_000

    [arch_config]
    l1_coefficient = 0.05

Unknown keys are an error. Validation touches neither the disk nor the cache;
what needs the cache (layer present, enough windows) is checked by the trainer.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mtsae.errors import MtsaeError
from mtsae.values import did_you_mean

LR_DECAYS = ("linear", "cosine", "constant")
NORMALIZATIONS = ("expected_norm", "none")
DTYPES = ("auto", "float32", "bfloat16")

DEFAULT_ARCH = "mtsae"
DEFAULT_LAYER = 19
DEFAULT_D_SAE = 2304
DEFAULT_LR = 3e-4
DEFAULT_WINDOW = 128
DEFAULT_HOLDOUT_FRACTION = 0.05
BATCH_TOKENS = 4096
"""Default batch: ``batch_windows = max(1, BATCH_TOKENS // window)`` windows."""

# Run-control fields: they may differ between a run and its resumption.
RUN_CONTROL_FIELDS = ("cache", "out", "device", "prefetch_batches", "wandb")


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class Windowing:
    """How a run cuts its cache into windows and splits them: the one check of these values.

    Made by :meth:`TrainConfig.windowing` (or directly, e.g. from a finished
    run's ``run.json``); a ``Windowing`` that exists is valid, so the loader and
    the pure index math of :mod:`mtsae.train.windows` below it check nothing.
    ``stride`` None means the window (windows tile each sequence).
    """

    window: int = DEFAULT_WINDOW
    stride: int | None = None  # None: the window (an int once made)
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", self.window)
        _raise_first([
            (_is_int(self.window) and self.window >= 1, f"--window must be a positive integer, got {self.window!r}"),
            (_is_int(self.stride) and self.stride >= 1, f"--stride must be a positive integer, got {self.stride!r}"),
            (_is_number(self.holdout_fraction) and 0 < self.holdout_fraction < 1, "--holdout-fraction must be in "
             f"(0, 1) (held-out metrics need held-out sequences), got {self.holdout_fraction!r}"),
            (_is_int(self.seed) and 0 <= self.seed < 2**64,
             f"--seed must be an integer in [0, 2**64) (torch's seed range), got {self.seed!r}"),
        ])


@dataclass
class TrainConfig:
    cache: str | None = _doc("Activation cache written by `mtsae harvest` (required): a path, or an fsspec URL "
                                "(s3://...) pulled once into a verified local copy (docs/remote-caches.md).", default=None)
    out: str | None = _doc(
        "Run directory: log.jsonl, run.json, checkpoints/step_NNNNNN/, final/ (required).", default=None
    )
    preset: str | None = _doc(
        "Named recipe (run0..run3) that fills arch, arch_config, layer, d_sae, lr and window; "
        "explicit values override it.",
        default=None,
    )
    arch: str | None = _doc(f"SAE architecture (registry name). Default: {DEFAULT_ARCH!r}, or the preset's. "
                            "Without a preset, mtsae means the recommended multi-timescale bank (mixer=bank, widths "
                            "1,9,33, causal, per-group TopK; docs/architectures.md).", default=None)
    layer: int | None = _doc(
        f"Residual-stream layer to train on (must be in the cache). Default: {DEFAULT_LAYER}, or the preset's.",
        default=None,
    )
    d_sae: int | None = _doc(f"Dictionary size (features). Default: {DEFAULT_D_SAE}, or the preset's.", default=None)
    arch_config: dict[str, Any] = _doc(
        "Overrides of the architecture's config (l1_coefficient, k, dilations, cos_coefficient, padding, "
        "kernel_size, dead_tokens_threshold, ...); merged over the preset's.",
        default_factory=dict,
    )
    window: int | None = _doc(
        f"Tokens per training window (T of [B, T, d]); windows never cross a sequence. "
        f"Default: {DEFAULT_WINDOW}, or the preset's.",
        default=None,
    )
    stride: int | None = _doc("Tokens between window starts within a sequence. Default: the window.", default=None)
    batch_windows: int | None = _doc(
        f"Windows per batch (batch tokens = batch_windows x window). Default: {BATCH_TOKENS} // window.", default=None
    )
    train_tokens: int | None = _doc(
        "Training tokens, rounded down to whole batches. Default: one epoch of the train split.", default=None
    )
    steps: int | None = _doc("Optimizer steps (instead of train_tokens).", default=None)
    lr: float | None = _doc(f"Adam learning rate. Default: {DEFAULT_LR}, or the preset's.", default=None)
    lr_warmup_steps: int = _doc("Steps of linear learning-rate warm-up from 0.", default=0)
    lr_decay: str = _doc("Learning-rate decay to 0 at the last step: linear, cosine or constant (none).", default="linear")
    lr_decay_fraction: float = _doc(
        "Fraction of all steps, at the end, over which the learning rate decays (1.0: the whole run).", default=0.2
    )
    sparsity_warmup_steps: int = _doc(
        "Steps over which the sparsity (L1/L0) coefficient ramps linearly from 0 to its value.", default=0
    )
    target_l0: float | None = _doc(
        "Hold the training L0 near this value by adapting the sparsity coefficient (relu, mtsae, jumprelu) over "
        "the first 80 % of steps, then freezing it; for matched-L0 comparisons. topk/batchtopk: set --k instead; "
        "a TopK-style mtsae (the default) takes it as k = round(value).",
        default=None,
    )
    grad_clip: float = _doc("Clip the gradient's global L2 norm to this (0: no clipping).", default=1.0)
    normalize_activations: str = _doc(
        "expected_norm: scale inputs so that E||x|| = sqrt(d_in), estimated on train windows; the scale is "
        "folded into saved weights so checkpoints act on raw activations. none: train on raw activations.",
        default="expected_norm",
    )
    holdout_fraction: float = _doc("Fraction of sequences held out for evaluation (split by sequence).",
                                   default=DEFAULT_HOLDOUT_FRACTION)
    eval_every: int = _doc("Evaluate on held-out windows every N steps (0: only at the end).", default=500)
    eval_tokens: int = _doc(
        "Held-out tokens per evaluation (a fixed seeded subset of windows; 0: all held-out windows).",
        default=262_144,
    )
    checkpoint_every: int = _doc(
        "Write a resumable checkpoint every N steps (0: only the final one).", default=1000
    )
    seed: int = _doc("Seed of the SAE initialisation, the held-out split and the window order.", default=0)
    device: str = _doc("'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...", default="auto")
    dtype: str = _doc(
        "Compute dtype: auto (bfloat16 autocast on CUDA, float32 on CPU), float32 or bfloat16 (autocast). "
        "Parameters and optimizer state stay float32.",
        default="auto",
    )
    prefetch_batches: int = _doc("Batches assembled ahead by the background loader thread (0: none).", default=4)
    wandb: str | None = _doc(
        "Weights & Biases project to mirror the run to: the metrics of log.jsonl, the config, the final checkpoint "
        "as an artifact (needs the wandb package; WANDB_MODE=offline works without an account).", default=None)

    # ------------------------------------------------------------ building
    def __post_init__(self) -> None:
        self.arch_config = dict(self.arch_config or {})
        if self.preset is not None:
            from mtsae.train.presets import get_preset

            preset = get_preset(self.preset)
            if self.arch is not None and self.arch != preset.architecture:
                raise MtsaeError(
                    f"--arch {self.arch} conflicts with --preset {self.preset} (a {preset.architecture} recipe); "
                    "drop one of them"
                )
            self.arch = preset.architecture
            self.arch_config = {**preset.arch_config, **self.arch_config}
            for name, value in preset.training_dict().items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        fallbacks = {"arch": DEFAULT_ARCH, "layer": DEFAULT_LAYER, "d_sae": DEFAULT_D_SAE, "lr": DEFAULT_LR,
                     "window": DEFAULT_WINDOW}
        for name, value in fallbacks.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._resolve_arch_options()
        if self.stride is None:
            self.stride = self.window
        if self.batch_windows is None and isinstance(self.window, int) and self.window > 0:
            self.batch_windows = max(1, BATCH_TOKENS // self.window)
        for key, value in list(self.arch_config.items()):
            if isinstance(value, tuple):
                self.arch_config[key] = list(value)  # JSON/TOML form; configs turn it back into a tuple

    def _resolve_arch_options(self) -> None:
        """The architecture's own resolution (recommended options without a preset, ``--target-l0`` as its
        own knob); an unknown name is left for :meth:`validate` to report."""
        from mtsae.train.registry import architecture_names, get_architecture

        if self.arch in architecture_names():
            self.arch_config, self.target_l0 = get_architecture(self.arch).resolve_options(
                self.arch_config, d_sae=self.d_sae, target_l0=self.target_l0, recommend=self.preset is None)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from plain values (TOML, JSON), refusing unknown keys."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise MtsaeError(f"unknown training option(s) {unknown}; valid options: {', '.join(names)}")
        if "arch_config" in values and not isinstance(values["arch_config"], dict):
            raise MtsaeError("arch_config must be a table of architecture options, e.g. [arch_config] k = 32")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; ``from_dict`` inverts it."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    # ---------------------------------------------------------- validation
    def validate(self) -> "TrainConfig":
        """Check every value without I/O; raises ``MtsaeError`` naming the option and the fix. Returns self."""
        from mtsae.train.registry import architecture_names

        if self.arch not in architecture_names():
            raise MtsaeError(f"unknown --arch {self.arch!r}{did_you_mean(self.arch, architecture_names())}; "
                             f"choose one of: {', '.join(architecture_names())}")
        _raise_first([
            (self.cache is not None and str(self.cache) != "", "--cache is required: the path of a cache written by `mtsae harvest`"),
            (self.out is not None and str(self.out) != "", "--out is required: the run directory to write"),
            (_is_int(self.layer) and self.layer >= 0, f"--layer must be a non-negative integer, got {self.layer!r}"),
            (_is_int(self.d_sae) and self.d_sae >= 1, f"--d-sae must be a positive integer, got {self.d_sae!r}"),
        ])
        self.windowing()  # window, stride, holdout fraction and seed
        _raise_first([
            (_is_int(self.batch_windows) and self.batch_windows >= 1,
             f"--batch-windows must be a positive integer, got {self.batch_windows!r}"),
            (self.steps is None or self.train_tokens is None, "give --steps or --train-tokens, not both"),
            (self.steps is None or (_is_int(self.steps) and self.steps >= 1),
             f"--steps must be at least 1 (a run that trains 0 steps is refused), got {self.steps!r}"),
            (self.train_tokens is None or (_is_int(self.train_tokens) and self.train_tokens >= 1),
             f"--train-tokens must be a positive integer, got {self.train_tokens!r}"),
            (_is_number(self.lr) and self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr!r}"),
            (_is_int(self.lr_warmup_steps) and self.lr_warmup_steps >= 0,
             f"--lr-warmup-steps must be >= 0, got {self.lr_warmup_steps!r}"),
            (self.lr_decay in LR_DECAYS, f"--lr-decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}"),
            (_is_number(self.lr_decay_fraction) and 0 <= self.lr_decay_fraction <= 1,
             f"--lr-decay-fraction must be in [0, 1], got {self.lr_decay_fraction!r}"),
            (_is_int(self.sparsity_warmup_steps) and self.sparsity_warmup_steps >= 0,
             f"--sparsity-warmup-steps must be >= 0, got {self.sparsity_warmup_steps!r}"),
            (self.target_l0 is None or (_is_number(self.target_l0) and 0 < self.target_l0 <= self.d_sae),
             f"--target-l0 must be a number in (0, d_sae], got {self.target_l0!r}"),
            (_is_number(self.grad_clip) and self.grad_clip >= 0, f"--grad-clip must be >= 0, got {self.grad_clip!r}"),
            (self.normalize_activations in NORMALIZATIONS,
             f"--normalize-activations must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize_activations!r}"),
            (_is_int(self.eval_every) and self.eval_every >= 0, f"--eval-every must be >= 0, got {self.eval_every!r}"),
            (_is_int(self.eval_tokens) and self.eval_tokens >= 0, f"--eval-tokens must be >= 0, got {self.eval_tokens!r}"),
            (_is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
             f"--checkpoint-every must be >= 0, got {self.checkpoint_every!r}"),
            (isinstance(self.device, str) and self.device != "", "--device must be auto, cpu, cuda or cuda:N"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (_is_int(self.prefetch_batches) and self.prefetch_batches >= 0,
             f"--prefetch-batches must be >= 0, got {self.prefetch_batches!r}"),
            (self.wandb is None or (isinstance(self.wandb, str) and self.wandb.strip() != ""),
             f"--wandb takes a wandb project name, got {self.wandb!r}"),
        ])
        self._check_arch_config()
        return self

    def _check_arch_config(self) -> None:
        """The architecture's own checks (placeholder d_in: nothing there depends on it)."""
        from mtsae.train.registry import get_architecture

        cls = get_architecture(self.arch)
        if self.target_l0 is not None and cls.sparsity_coefficient is None:
            raise MtsaeError(f"--target-l0 adapts a sparsity coefficient, and {self.arch} has none; "
                             "set its L0 directly with --k")
        reserved = sorted({"d_in", "d_sae"} & set(self.arch_config))
        if reserved:
            raise MtsaeError(f"arch_config may not set {reserved}: d_in comes from the cache and d_sae is its own option")
        _check_arch_options(self.arch, cls, self.arch_config)
        cls.config_class.from_dict({"d_in": 1, "d_sae": self.d_sae, **self.arch_config})

    def windowing(self) -> Windowing:
        """The run's windows and split, checked (raises ``MtsaeError`` naming the option)."""
        return Windowing(self.window, self.stride, self.holdout_fraction, self.seed)

    # ------------------------------------------------------------ derived
    @property
    def batch_tokens(self) -> int:
        return self.batch_windows * self.window

    def same_run(self, other: "TrainConfig") -> bool:
        """Whether ``other`` trains the same thing (run-control fields such as device may differ)."""
        mine, theirs = self.to_dict(), other.to_dict()
        for name in RUN_CONTROL_FIELDS:
            mine.pop(name), theirs.pop(name)
        return _jsonish(mine) == _jsonish(theirs)

    def differences(self, other: "TrainConfig") -> list[str]:
        mine, theirs = _jsonish(self.to_dict()), _jsonish(other.to_dict())
        return [k for k in mine if k not in RUN_CONTROL_FIELDS and mine[k] != theirs.get(k)]


def _check_arch_options(arch: str, cls: Any, arch_config: dict[str, Any]) -> None:
    """An option the architecture does not have is named as the user gave it, with the architectures that have it."""
    from mtsae.train.registry import architecture_names, get_architecture

    def options(c: Any) -> set[str]:
        return {f.name for f in dataclasses.fields(c.config_class)} - {"d_in", "d_sae"}

    for name in sorted(set(arch_config) - options(cls)):
        having = [a for a in architecture_names() if name in options(get_architecture(a))]
        raise MtsaeError(f"--{name.replace('_', '-')} (arch option {name!r}) does not apply to --arch {arch}, whose "
                         f"options are {', '.join(sorted(options(cls)))}; drop it"
                         + (f", or use an architecture that has it: {', '.join(having)}" if having else ""))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from an optional TOML file with ``overrides`` on top (``None`` values are ignored).

    ``overrides["arch_config"]`` is merged key by key over the file's.
    """
    values: dict[str, Any] = read_toml(path) if path is not None else {}
    given = {key for key, value in (overrides or {}).items() if value is not None}
    for one, other in (("steps", "train_tokens"), ("train_tokens", "steps")):
        if one in given and other not in given:
            values.pop(other, None)  # the command line's budget replaces the file's, whichever kind it is
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "arch_config":
            if not isinstance(values.get("arch_config", {}), dict):
                raise MtsaeError(f"arch_config in {path} must be a table, e.g. [arch_config] k = 32")
            values["arch_config"] = {**values.get("arch_config", {}), **value}
        else:
            values[key] = value
    return TrainConfig.from_dict(values)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MtsaeError(f"cannot read config file {path} ({exc.strerror}); check the --config path") from None
    except UnicodeDecodeError as exc:
        raise MtsaeError(f"config file {path} is not valid TOML (not UTF-8 text: {exc.reason}); fix the encoding") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MtsaeError(f"config file {path} is not valid TOML ({exc}); fix the syntax") from None


def field_default(name: str) -> Any:
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _raise_first(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed ``(ok, message)`` check."""
    for ok, message in checks:
        if not ok:
            raise MtsaeError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _jsonish(values: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(values, sort_keys=True))


def parse_assignments(items: list[str] | None, option: str = "--arch-option") -> dict[str, Any]:
    """``["k=32", "padding=zeros"]`` → ``{"k": 32, "padding": "zeros"}``; values are read as JSON when they parse."""
    import json

    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MtsaeError(f"{option} takes KEY=VALUE such as k=32, got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except ValueError:
            values[key.strip()] = raw
    return values
