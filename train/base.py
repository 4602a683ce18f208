"""Base class, config and typed outputs shared by every SAE architecture.

Parameter layout follows SAELens / SAE-Bench (no transposes anywhere)::

    W_enc [d_in, d_sae]   b_enc [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]
    pre   = (x - b_dec) @ W_enc + b_enc
    recon = codes @ W_dec + b_dec

What a trainer does each step (see docs/architectures.md)::

    sae.train()
    out = sae.loss(x, sparsity_scale=linear_warmup(step, warmup_steps))
    out.loss.backward()
    sae.remove_parallel_gradient_()   # before optimizer.step()
    optimizer.step(); optimizer.zero_grad()
    sae.constrain_parameters_()       # unit decoder rows (+ arch constraints)

``loss()`` also updates the training-only state in training mode (dead-feature
counters, the BatchTopK inference threshold); nothing else needs calling.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from mtsae.errors import MtsaeError
from mtsae.values import same_kind
from mtsae.train import losses


def require(condition: bool, message: str) -> None:
    """Raise ``MtsaeError(message)`` unless ``condition``; for config validation."""
    if not condition:
        raise MtsaeError(message)


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Fields every architecture has. Subclasses add their hyper-parameters with defaults."""

    d_in: int
    """Width of the input activations (the LM's residual stream)."""
    d_sae: int
    """Number of dictionary features (latents)."""
    dead_tokens_threshold: int = 10_000_000
    """A feature that has not fired for this many training tokens counts as dead
    (logged as ``dead_fraction`` for every arch; drives AuxK where an arch has it)."""

    def __post_init__(self) -> None:
        require(self.d_in > 0, f"d_in must be positive, got {self.d_in}; pass the model's residual width")
        require(self.d_sae > 0, f"d_sae must be positive, got {self.d_sae}; pass the dictionary size")
        require(
            self.dead_tokens_threshold > 0,
            f"dead_tokens_threshold must be positive, got {self.dead_tokens_threshold}",
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SAEConfig:
        """Build from a plain dict (e.g. ``cfg.json``), refusing unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        require(
            not unknown,
            f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)}",
        )
        for name, value in values.items():
            _check_field_type(cls, name, value)
        try:
            return cls(**values)
        except TypeError as exc:  # missing required field
            raise MtsaeError(f"invalid {cls.__name__}: {exc}") from None

    @property
    def is_causal(self) -> bool:
        """Whether a token's codes depend only on that token and earlier ones in ``[B, T, d]`` input.

        Only a causal SAE may be spliced into a model's forward pass (SAE-Bench core's
        reconstruction, unlearning's clamp hook): a non-causal one lets position t read
        tokens after t. Per-token architectures are causal.
        """
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); ``from_dict`` inverts it."""
        return {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }


def _check_field_type(cls: type, name: str, value: Any) -> None:
    """Refuse a value of the wrong kind (a string for a coefficient) with the field's name, before it breaks a check."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = 0  # d_in, d_sae: required integers
    if default is None or value is None:
        return
    if not same_kind(value, default):
        kind = "list" if isinstance(default, (tuple, list)) else type(default).__name__
        raise MtsaeError(f"{cls.__name__}.{name} = {value!r} is not a {kind} (like {default!r}); "
                         f"fix the {name} value (--arch-option / [arch_config])")


class Encoded(NamedTuple):
    """Result of :meth:`SparseAutoencoder.encode_full`."""

    codes: torch.Tensor
    """``[..., d_sae]`` sparse, non-negative feature activations."""
    pre: torch.Tensor
    """``[..., d_sae]`` what the sparsifying activation acted on (for aux losses):
    the affine pre-activations, or for MTSAE the temporally mixed ones."""


class Term(NamedTuple):
    """One loss term: ``total += coefficient * value``; ``value`` is logged unweighted."""

    value: torch.Tensor
    coefficient: float


class LossOutput(NamedTuple):
    """Result of :meth:`SparseAutoencoder.loss`."""

    loss: torch.Tensor
    """Scalar total loss; call ``.backward()`` on it."""
    recon: torch.Tensor
    """Reconstruction, same shape as the input."""
    codes: torch.Tensor
    """Feature activations ``[..., d_sae]``."""
    components: dict[str, float]
    """Unweighted terms and metrics for logging: always ``loss``, ``mse``, ``l0``,
    ``dead_fraction``; plus the arch's terms (``l1``, ``auxk``, ``sep``, ``l0_penalty``…)."""


def linear_warmup(step: int, warmup_steps: int) -> float:
    """Sparsity warm-up factor for ``loss(sparsity_scale=…)``: ramps 0→1 over ``warmup_steps``."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def unit_rows(W: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``W`` with each row scaled to unit L2 norm (zero rows stay ~zero)."""
    return W / torch.linalg.vector_norm(W, dim=-1, keepdim=True).clamp_min(eps)


class SparseAutoencoder(nn.Module, ABC):
    """Base SAE: parameters, decoder, loss assembly, decoder constraints, dead-feature tracking.

    Subclasses implement :meth:`encode_full` and optionally :meth:`penalties`
    (extra loss terms), :meth:`update_training_state_` and the checkpoint hooks.
    ``encode`` accepts ``[N, d_in]`` and ``[B, T, d_in]``; for per-token
    architectures the two are the same computation on the last dim.
    """

    architecture: ClassVar[str]
    """Registry name, set by ``@register``."""
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    """The dataclass this architecture is configured with."""
    saelens_architecture: ClassVar[str | None] = None
    """SAELens ``architecture`` whose inference ``encode`` equals ours (eval mode), or ``None``."""
    sparsity_coefficient: ClassVar[str | None] = None
    """Config field of the coefficient that ``sparsity_scale`` multiplies (``--target-l0`` adapts it); None
    when L0 is set directly (TopK-style)."""
    sparsity_symbol: ClassVar[str | None] = None
    """How reports name that coefficient (``L1 λ``); None: they show its config name."""
    is_temporal: ClassVar[bool] = False
    """True when a token's codes depend on its neighbours in ``[B, T, d]`` input, so
    flattening to ``[B·T, d]`` changes the result (see the arch's ``[N, d]`` semantics)."""
    training_state_buffers: ClassVar[tuple[str, ...]] = ("tokens_since_fired",)
    """Buffers that are training bookkeeping, not model weights; a checkpoint stores
    them apart from ``sae_weights.safetensors`` so SAELens can load that file strictly."""
    scale_powers: ClassVar[dict[str, int]] = {"W_enc": 0, "W_dec": 0, "b_enc": 1, "b_dec": 1}
    """How each weight (``state_dict`` name, training-state buffers aside) scales with the input: a run
    trained on ``scale·x`` saves ``value / scale**power`` so the checkpoint acts on raw ``x``
    (:func:`mtsae.train.trainer.fold_activation_scale`). A weight missing here cannot be folded."""
    config_scale_powers: ClassVar[dict[str, int]] = {}
    """The same for config fields measured in input units (JumpReLU ``bandwidth``: 1, BatchNorm ``bn_eps``: 2)."""
    buffer_reductions: ClassVar[dict[str, str]] = {}
    """How data-parallel training makes each buffer (``named_buffers`` name) equal on every rank after a step:
    ``"min"`` or ``"mean"`` (floating-point buffers). The base's ``tokens_since_fired`` counters are merged
    exactly by :mod:`mtsae.train.parallel` itself; every other buffer must be listed here."""
    tiny_config: ClassVar[dict[str, Any]] = {}
    """Options that make this architecture learn at test sizes (d_in 16–64, d_sae 32–96, tens of steps on
    normalised or random inputs); the test suite's one table of tiny configs is built from these."""

    tokens_since_fired: torch.Tensor

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        # int64 so that `.to(dtype)` leaves it alone and it never loses counts.
        self.register_buffer("tokens_since_fired", torch.zeros(cfg.d_sae, dtype=torch.long))
        self.reset_parameters()

    @classmethod
    def resolve_options(cls, options: dict[str, Any], *, d_sae: Any, target_l0: Any,
                        recommend: bool) -> tuple[dict[str, Any], Any]:
        """``(arch_config, target_l0)`` a training run resolves to before validation (values may still be
        invalid): an architecture may add its recommended options when the run names no preset
        (``recommend``) or turn ``--target-l0`` into an option of its own. Default: unchanged."""
        return options, target_l0

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-norm random decoder rows, ``W_enc = W_dec.T``, zero biases.

        The tied start makes each latent initially detect the direction it
        writes, which avoids many dead latents early on (Conerly et al. 2024,
        Gao et al. 2024).
        """
        self.W_dec.copy_(unit_rows(torch.randn_like(self.W_dec)))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # --------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs that are not ``[N, d_in]`` or ``[B, T, d_in]``."""
        if x.dim() not in (2, 3) or x.shape[-1] != self.cfg.d_in:
            raise MtsaeError(
                f"{self.architecture} SAE expects activations shaped [N, {self.cfg.d_in}] or "
                f"[B, T, {self.cfg.d_in}], got {list(x.shape)}; check d_in and the cache's layout"
            )

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` (SAELens ``apply_b_dec_to_input=True``)."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    @abstractmethod
    def encode_full(self, x: torch.Tensor) -> Encoded:
        """Codes and the tensor the sparsifier acted on; see :class:`Encoded`."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` for ``x`` of shape ``[N, d_in]`` or ``[B, T, d_in]``."""
        return self.encode_full(x).codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes @ W_dec + b_dec``."""
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ loss
    def penalties(
        self,
        x: torch.Tensor,
        enc: Encoded,
        recon: torch.Tensor,
        sparsity_scale: float,
        dead_mask: torch.Tensor,
    ) -> dict[str, Term]:
        """Architecture-specific loss terms added to the MSE (none by default)."""
        return {}

    def loss(
        self,
        x: torch.Tensor,
        *,
        sparsity_scale: float = 1.0,
        dead_mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """Training loss ``mse + Σ coefficient·term`` on ``x`` (``[N, d_in]`` or ``[B, T, d_in]``).

        Args:
            sparsity_scale: multiplies the sparsity coefficient (``l1`` / ``l0``),
                for a warm-up; see :func:`linear_warmup`. TopK-style sparsity has
                no coefficient and ignores it.
            dead_mask: ``[d_sae]`` bool, overrides the internally tracked dead
                features for this call (AuxK uses it).

        In training mode this also updates the training state: the per-feature
        "tokens since fired" counters (after reading the dead mask, so a feature
        that revives in this batch still counts as dead for this batch's AuxK)
        and any arch state (BatchTopK threshold).
        """
        self.check_input(x)
        enc = self.encode_full(x)
        recon = self.decode(enc.codes)
        if dead_mask is None:
            dead_mask = self.dead_mask()
        mse = losses.mse_loss(recon, x)
        terms = self.penalties(x, enc, recon, sparsity_scale, dead_mask)
        total = mse
        for term in terms.values():
            if term.coefficient != 0.0:
                total = total + term.coefficient * term.value
        if self.training:
            self.update_training_state_(enc)

        logged = {"loss": total, "mse": mse, "l0": losses.l0(enc.codes), "dead_fraction": dead_mask.float().mean()}
        logged.update({name: term.value for name, term in terms.items()})
        # One host sync for all the floats instead of one per component.
        values = torch.stack([v.detach().float().reshape(()) for v in logged.values()]).tolist()
        return LossOutput(total, recon, enc.codes, dict(zip(logged, values)))

    # ---------------------------------------------------- dead-feature state
    def dead_mask(self) -> torch.Tensor:
        """``[d_sae]`` bool: features silent for at least ``cfg.dead_tokens_threshold`` training tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens_threshold

    @torch.no_grad()
    def update_training_state_(self, enc: Encoded) -> None:
        """Advance the dead-feature counters by this batch (called by ``loss`` in training mode)."""
        codes_NF = enc.codes.reshape(-1, self.cfg.d_sae)
        fired = (codes_NF != 0).any(0)
        self.tokens_since_fired.add_(codes_NF.shape[0])
        self.tokens_since_fired.masked_fill_(fired, 0)

    # ----------------------------------------------------------- constraints
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        self.W_dec.copy_(unit_rows(self.W_dec))

    @torch.no_grad()
    def remove_parallel_gradient_(self) -> None:
        """Drop the component of ``W_dec.grad`` along each decoder row.

        With unit-norm rows that component only changes row norms, which the
        renormalisation after the step undoes anyway; removing it keeps Adam's
        moment estimates from being polluted by it (as SAELens and
        dictionary_learning do). Call after ``backward()``, before ``optimizer.step()``.
        """
        grad = self.W_dec.grad
        if grad is None:
            return
        direction = unit_rows(self.W_dec)
        grad.sub_((grad * direction).sum(-1, keepdim=True) * direction)

    @torch.no_grad()
    def constrain_parameters_(self) -> None:
        """Project parameters back onto their constraint set; call after ``optimizer.step()``.

        Base: unit decoder rows. Architectures extend it (JumpReLU: θ follows the encoder column norms).
        """
        self.normalize_decoder_()

    # ------------------------------------------------------- checkpoint hooks
    def saelens_config(self) -> dict[str, Any]:
        """Architecture-specific keys SAELens's config class needs in ``cfg.json`` (e.g. ``k``)."""
        return {}

    def tensors_for_saving(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(weights, training_state)`` to write to ``sae_weights.safetensors`` / ``mtsae_state.safetensors``."""
        weights, state = {}, {}
        for name, tensor in self.state_dict().items():
            (state if name in self.training_state_buffers else weights)[name] = tensor.detach()
        return weights, state

    def load_saved_tensors_(self, weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`tensors_for_saving`; takes the tensors as stored (dtype included)."""
        merged = {**weights, **state}
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(merged)), sorted(set(merged) - expected)
        require(
            not missing and not unexpected,
            f"checkpoint tensors do not match a {self.architecture} SAE "
            f"(missing {missing}, unexpected {unexpected}); was it saved by another mtsae version?",
        )
        for name, tensor in merged.items():
            current = self.state_dict()[name]
            require(
                tensor.shape == current.shape,
                f"checkpoint tensor {name!r} has shape {list(tensor.shape)} but the config implies "
                f"{list(current.shape)}; cfg.json and the weights disagree",
            )
        # assign=True keeps the stored dtype, so a round trip is bit-exact.
        self.load_state_dict(merged, strict=True, assign=True)
