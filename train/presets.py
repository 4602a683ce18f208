"""Named training presets reproducing the seed experiment's runs.

A :class:`Preset` is plain data a trainer consumes::

    preset = get_preset("run2")
    sae = build_sae(preset, d_in=2304)        # registry class + config overrides
    # the trainer also uses preset.layer / preset.lr / preset.window;
    # dataclasses.asdict(preset) gives a JSON-friendly record for logging.

All seed runs use layer 19, ``d_sae = 2304`` and ``lr = 3e-4``.
``window`` is the number of contiguous tokens per training sequence (T); it
matters only for temporal architectures (the per-token ``relu`` baseline sees
the same tokens whatever T is, so run0 keeps the default 128).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from mtsae.errors import MtsaeError
from mtsae.values import did_you_mean
from mtsae.train.registry import get_architecture

if TYPE_CHECKING:  # torch: not needed to list the presets
    from mtsae.train.base import SparseAutoencoder


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named run recipe."""

    name: str
    """Preset name (``run0`` …)."""
    architecture: str
    """Registry name of the SAE class (``relu``, ``mtsae``, …)."""
    arch_config: dict[str, Any]
    """Overrides for the architecture's config dataclass (not ``d_in``/``d_sae``)."""
    layer: int = 19
    """Residual-stream layer whose activations are trained on."""
    d_sae: int = 2304
    """Dictionary size."""
    lr: float = 3e-4
    """Adam learning rate."""
    window: int = 128
    """Tokens per contiguous training sequence (T of ``[B, T, d_in]``)."""
    description: str = ""
    """One line for humans."""

    def config_dict(self, d_in: int) -> dict[str, Any]:
        """Full architecture-config dict: ``d_in``, ``d_sae`` and the overrides."""
        return {"d_in": d_in, "d_sae": self.d_sae, **self.arch_config}

    def training_dict(self) -> dict[str, Any]:
        """The training overrides as a plain dict (``layer``, ``d_sae``, ``lr``, ``window``)."""
        return {"layer": self.layer, "d_sae": self.d_sae, "lr": self.lr, "window": self.window}


# The seed's mixer: BatchNorm γ starting at 1 and an unscaled separation loss (see train/archs/mtsae.py).
_SEED_MIXER = {"gate_init": 1.0, "temporal_loss": "separation", "temporal_loss_scale": "raw"}

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            Preset(
                "run0",
                "relu",
                {"l1_coefficient": 0.04},
                description="per-token ReLU SAE baseline, L1 0.04",
            ),
            Preset(
                "run1",
                "mtsae",
                {"dilations": (1, 2, 4), "cos_coefficient": 0.1, "l1_coefficient": 0.04, "padding": "circular", **_SEED_MIXER},
                window=8,
                description="MTSAE dilations (1,2,4), circular padding over 8-token windows",
            ),
            Preset(
                "run2",
                "mtsae",
                {"dilations": (1, 3, 9), "cos_coefficient": 0.2, "l1_coefficient": 0.08, "padding": "replicate", **_SEED_MIXER},
                description="MTSAE dilations (1,3,9), replicate padding, 128-token windows",
            ),
            Preset(
                "run3",
                "mtsae",
                {"dilations": (1, 4, 16), "cos_coefficient": 0.2, "l1_coefficient": 0.08, "padding": "replicate", **_SEED_MIXER},
                description="MTSAE dilations (1,4,16), replicate padding, 128-token windows",
            ),
        )
    }
)


# What `mtsae train --arch mtsae` trains without a preset (options given explicitly override it key by key;
# naming any option in CONV_MIXER_OPTIONS asks for the conv mixer and skips the recommendation):
# the multi-timescale bank — a third of the latents per token, a third over 9 tokens, a third over 33 (trailing,
# so causal) — with its own TopK budget per group; the best temporal design of docs/results.md.
RECOMMENDED_MTSAE: Mapping[str, Any] = MappingProxyType({
    "mixer": "bank", "widths": [1, 9, 33], "padding": "causal", "activation": "topk", "cos_coefficient": 0.0,
})
RECOMMENDED_K = 32
"""The recommended MTSAE's k when neither --k nor --target-l0 is given (at most d_sae // 4, so every group fits)."""
CONV_MIXER_OPTIONS = frozenset({"mixer", "dilations", "kernel_size", "gate_init", "bn_momentum", "bn_eps"})


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def describe_presets() -> str:
    """Every preset with what it is, for help texts and errors: ``run0 (per-token ReLU SAE baseline, …), …``."""
    return "; ".join(f"{p.name} = {p.description}" for p in PRESETS.values())


def get_preset(name: str) -> Preset:
    """A copy of the preset called ``name``; ``MtsaeError`` listing the valid names otherwise.

    The copy has its own ``arch_config`` dict, so a consumer that edits it
    cannot change the preset for everyone else.
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise MtsaeError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; choose one of: "
                         f"{describe_presets()}") from None
    return dataclasses.replace(preset, arch_config=dict(preset.arch_config))


def build_sae(preset: Preset | str, d_in: int, **config_overrides: Any) -> SparseAutoencoder:
    """A freshly initialised SAE for ``preset``; ``config_overrides`` win over the preset's."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    cls = get_architecture(preset.architecture)
    return cls(cls.config_class.from_dict({**preset.config_dict(d_in), **config_overrides}))
