"""Multi-Scale Temporal SAE (MTSAE).

::

    pre   = (x - b_dec) @ W_enc + b_enc                       [B, T, d_sae]
    mixed = pre + Σ_{r ∈ dilations} BN_r(conv_r(pre))         (mtsae.train.temporal)
    codes = ReLU(mixed)            or TopK_k(mixed) then ReLU  (activation="topk")
    recon = codes @ W_dec + b_dec
    loss  = mean_tokens ‖recon - x‖²
            + l1_coefficient · s · mean_tokens Σ_f |codes_f|
            + cos_coefficient · V · L_temporal
            (+ auxk_coefficient · L_aux when activation="topk")

    L_temporal = L_sep      (temporal_loss="separation", the seed's)
               = 1/(B·(T-1)) · Σ_b Σ_{t=0}^{T-2} <c[b,t], c[b,t+1]> / max(‖c[b,t]‖·‖c[b,t+1]‖, 1e-8)
               = L_persist  (temporal_loss="persistence", see losses.adjacent_change)
               = Σ ‖c[b,t+1] - c[b,t]‖² / Σ (‖c[b,t]‖² + ‖c[b,t+1]‖²)
    V = mean_tokens ‖x - x̄‖² (detached batch variance; temporal_loss_scale="variance")
      = 1                     (temporal_loss_scale="raw", the seed's)

Both temporal losses lie in [0, 1]. Scaled by ``V`` they are in the units of the
summed MSE, so ``cos_coefficient = 0.1`` means "a term of 1 costs as much as 10 %
of the variance left unexplained". Unscaled (the seed), 0.1 was about 1000×
smaller than the MSE at d_in 2304 and changed nothing measurable. ``L_sep``
pushes adjacent codes *apart*; ``L_persist`` rewards codes that hold their value.

The temporal branches start switched off: BatchNorm γ (the branch gate) starts
at ``gate_init = 0``, so ``mixed == pre`` and an MTSAE begins exactly as its
per-token twin (``relu`` / ``topk`` / ``batchtopk`` with the same seed); the
gate opens as training finds temporal evidence useful. The seed started γ at 1,
adding a unit-variance term of random kernels to every pre-activation whatever
the evidence scale (first-step reconstruction error ≈ 7× ReLU's); presets
run1–run3 keep ``gate_init = 1`` and ``temporal_loss_scale = "raw"`` to
reproduce the seed.

**Activations.** ``relu`` (L1 penalty), ``topk`` (TopK + AuxK, no L1) or
``batchtopk`` (BatchTopK in training + AuxK, the learned global threshold in
eval, as :mod:`mtsae.train.archs.batchtopk`): each MTSAE has a per-token twin
(``relu`` / ``topk`` / ``batchtopk``) it equals at initialisation.

**Multi-timescale bank** (``mixer="bank"``, no temporal parameters)::

    groups g = 0..G-1: contiguous thirds (for G = 3) of the d_sae features
    mixed[..., group g] = mean of pre[..., group g] over a window of widths[g] tokens
                          (trailing with padding="causal", centred with "zeros";
                           edge windows average over their part inside the sequence)
    codes = TopK within each group with its own budget group_k[g]   (activation="topk")

Default widths (1, 9, 33): a third of the latents read the token itself, a third
a 9-token average, a third a 33-token average, with budgets 3/1/1 at k = 5 —
the design an independent review found to beat the best per-token SAE where
slow features are weak per token (docs/results.md). Pooling raises a slow
feature's signal-to-noise by averaging the interference of the fast ones; the
separate budgets stop the per-token group from taking every slot. The bank does
not use the conv fields (dilations, kernel_size, gate_init, bn_*); the fused
Triton kernel is not involved (it is pure PyTorch: a running sum over time).

``conv_r`` is a depth-wise (one kernel per feature) dilated 1-D convolution over
time and ``BN_r`` a BatchNorm over the feature channel with statistics over B
and T (running statistics in eval mode).

Design choice: mix the *pre-activations*, not the input or the codes.
  * Every feature keeps exactly one encoder direction (a column of ``W_enc``)
    and one decoder direction (a row of ``W_dec``); the temporal path only
    re-weights a feature's own evidence across neighbouring tokens, so
    features stay interpretable and the SAELens/SAE-Bench weight layout holds.
  * The mixing is per feature and depth-wise: ``len(dilations)·K`` weights
    per feature instead of a d_in×d_in or d_sae×d_sae temporal map.
  * Mixing before the non-linearity lets context both raise and suppress a
    feature (a post-ReLU mix could only add to already-positive codes).
  * A fused kernel can later consume exactly this ``[B, T, d_sae]`` tensor.

``[N, d_in]`` input is treated as N independent sequences of length T = 1; the
padding mode then decides what each length-1 convolution sees (c = centre tap):
  * circular, replicate: every tap reads the token itself → conv_r = (Σ_j w[r, :, j])·pre
  * zeros: only the centre tap is in range → conv_r = w[r, :, c]·pre
  * causal: only the last (current-step) tap → conv_r = w[r, :, K-1]·pre
The BatchNorm then normalises over the N tokens (training) or with running
statistics (eval), and ``L_sep = 0`` (no adjacent pairs). In eval mode this makes
``[N, d]`` encoding a per-token function, *different* from encoding the same
tokens as one ``[1, N, d]`` sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mtsae.errors import MtsaeError
from mtsae.train import losses
from mtsae.train.activations import batch_topk_relu, grouped_topk_relu, topk_relu, update_batchtopk_threshold_
from mtsae.train.base import Encoded, SAEConfig, SparseAutoencoder, Term, require
from mtsae.train.registry import register
from mtsae.train.temporal import BANK_PADDINGS, TemporalMixer, bank_mix, group_sizes, is_causal, validate_temporal_args

ACTIVATIONS = ("relu", "topk", "batchtopk")
MIXERS = ("conv", "bank")
TEMPORAL_LOSSES = ("separation", "persistence")
TEMPORAL_LOSS_SCALES = ("variance", "raw")


@dataclasses.dataclass(frozen=True)
class MTSAEConfig(SAEConfig):
    l1_coefficient: float = 0.04
    """Weight of the L1 penalty ``mean_tokens Σ_f |codes_f|``."""
    cos_coefficient: float = 0.1
    """Weight of the temporal loss (``temporal_loss``), scaled as ``temporal_loss_scale`` says."""
    temporal_loss: str = "separation"
    """``separation`` (the seed's adjacent-step cosine, pushes adjacent codes apart) or ``persistence``
    (penalises change between adjacent codes)."""
    temporal_loss_scale: str = "variance"
    """``variance``: the temporal loss times the batch's input variance, so ``cos_coefficient`` is a
    fraction of the MSE scale; ``raw``: unscaled, as the seed (presets run1–run3)."""
    gate_init: float = 0.0
    """Initial BatchNorm γ (gate) of every temporal branch: 0 starts the MTSAE as its per-token twin;
    the seed used 1 (presets run1–run3)."""
    dilations: tuple[int, ...] = (1, 2, 4)
    """Dilation rates, one depth-wise conv + BatchNorm branch each."""
    kernel_size: int = 3
    """Taps per branch; must be odd unless ``padding="causal"``."""
    padding: str = "causal"
    """Boundary rule over the window: ``causal | circular | replicate | zeros``. Only ``causal``
    (taps at t, t-r, …) lets the SAE be spliced into a model; the others read future tokens."""
    activation: str = "relu"
    """``relu`` (L1), ``topk`` (TopK on the mixed pre-activations, with AuxK) or ``batchtopk`` (BatchTopK in
    training, a learned global threshold in eval, with AuxK): each the temporal twin of the per-token arch."""
    k: int = 64
    """Active latents per token (mean over the batch for ``batchtopk``) when ``activation`` is topk-style."""
    mixer: str = "conv"
    """``conv``: dilated depth-wise convs behind BatchNorm gates; ``bank``: fixed multi-timescale bank
    (feature group g reads its pre-activation averaged over ``widths[g]`` tokens; no parameters)."""
    widths: tuple[int, ...] = (1, 9, 33)
    """``mixer="bank"``: averaging width of each feature group (d_sae split evenly, in order)."""
    group_k: tuple[int, ...] = ()
    """``mixer="bank"``, ``activation="topk"``: TopK budget of each group; empty: every group after the first
    gets ``max(1, round(k/5))`` and the first the rest (3/1/1 at k 5)."""
    threshold_beta: float = 0.999
    """``activation="batchtopk"``: EMA decay of the inference threshold (as ``batchtopk``)."""
    k_aux: int | None = None
    """AuxK latents when ``activation="topk"``; ``None`` means ``d_in // 2``."""
    auxk_coefficient: float = 1 / 32
    """AuxK weight when ``activation="topk"``."""
    bn_momentum: float = 0.1
    """BatchNorm running-statistics momentum (``torch.nn.BatchNorm1d`` convention)."""
    bn_eps: float = 1e-5
    """BatchNorm variance epsilon."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # JSON round trips turn the tuple into a list; keep the config hashable.
        object.__setattr__(self, "dilations", tuple(self.dilations))
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "group_k", tuple(self.group_k))
        require(self.mixer in MIXERS, f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.mixer == "conv":
            validate_temporal_args(self.dilations, self.kernel_size, self.padding)
        else:
            self._validate_bank()
        require(0 <= self.threshold_beta < 1, f"threshold_beta must be in [0, 1), got {self.threshold_beta}")
        require(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        require(self.l1_coefficient >= 0, f"l1_coefficient must be >= 0, got {self.l1_coefficient}")
        require(self.cos_coefficient >= 0, f"cos_coefficient must be >= 0, got {self.cos_coefficient}")
        require(self.temporal_loss in TEMPORAL_LOSSES,
                f"temporal_loss must be one of {TEMPORAL_LOSSES}, got {self.temporal_loss!r}")
        require(self.temporal_loss_scale in TEMPORAL_LOSS_SCALES,
                f"temporal_loss_scale must be one of {TEMPORAL_LOSS_SCALES}, got {self.temporal_loss_scale!r}")
        require(
            self.activation == "relu" or 0 < self.k <= self.d_sae,
            f"k must be in 1..d_sae={self.d_sae} for activation={self.activation!r}, got {self.k}",
        )
        require(self.k_aux is None or self.k_aux > 0, f"k_aux must be positive or None, got {self.k_aux}")
        require(self.auxk_coefficient >= 0, f"auxk_coefficient must be >= 0, got {self.auxk_coefficient}")
        require(0 <= self.bn_momentum <= 1, f"bn_momentum must be in [0, 1], got {self.bn_momentum}")
        require(self.bn_eps > 0, f"bn_eps must be positive, got {self.bn_eps}")

    @property
    def is_causal(self) -> bool:
        if self.mixer == "bank":  # trailing windows read t, t-1, ...; centred ones read ahead
            return self.padding == "causal" or all(w == 1 for w in self.widths)
        return is_causal(self.kernel_size, self.dilations, self.padding)

    def _validate_bank(self) -> None:
        require(len(self.widths) >= 1 and all(isinstance(w, int) and w >= 1 for w in self.widths),
                f"widths must be positive integers, got {self.widths}")
        require(len(self.widths) <= self.d_sae, f"{len(self.widths)} widths need d_sae >= {len(self.widths)}")
        require(self.padding in BANK_PADDINGS,
                f"mixer='bank' takes padding {BANK_PADDINGS} (trailing or centred windows), got {self.padding!r}")
        require(self.padding == "causal" or all(w % 2 == 1 for w in self.widths),
                f"centred bank windows need odd widths, got {self.widths}; use odd widths or padding='causal'")
        require(not self.group_k or self.activation == "topk", "group_k needs activation='topk'")
        if self.activation == "topk":
            budgets = self.group_budgets()
            sizes = group_sizes(self.d_sae, len(self.widths))
            require(len(budgets) == len(self.widths) and all(0 < b <= n for b, n in zip(budgets, sizes)),
                    f"group_k must give each of the {len(self.widths)} groups (sizes {sizes}) a budget in 1..size, "
                    f"got {budgets}; raise k or pass group_k")

    def group_budgets(self) -> tuple[int, ...]:
        """Per-group TopK budgets of the bank (``group_k``, or derived from ``k``)."""
        if self.group_k:
            return self.group_k
        pooled = [max(1, round(self.k / 5))] * (len(self.widths) - 1)
        return (self.k - sum(pooled), *pooled)


@register("mtsae")
class MTSAE(SparseAutoencoder):
    """Multi-Scale Temporal SAE (see module docstring). SAELens opens it after ``import mtsae.saelens``."""

    config_class = MTSAEConfig
    saelens_architecture = None
    is_temporal = True
    sparsity_coefficient = "l1_coefficient"
    sparsity_symbol = "L1 λ"
    cfg: MTSAEConfig

    training_state_buffers = SparseAutoencoder.training_state_buffers + ("threshold_updates",)
    scale_powers = {
        **SparseAutoencoder.scale_powers, "threshold": 1,  # activation="batchtopk"
        "temporal.conv_weight": 0, "temporal.bn_weight": 1, "temporal.bn_bias": 1,  # mixer="conv"
        "temporal.bn_running_mean": 1, "temporal.bn_running_var": 2,
    }
    config_scale_powers = {"bn_eps": 2}
    buffer_reductions = {
        "threshold": "min", "threshold_updates": "mean",  # activation="batchtopk": as BatchTopKSAE
        # BatchNorm running statistics: the mean is exact for the running mean; the running variance
        # misses the spread between rank means (docs/scaling.md).
        "temporal.bn_running_mean": "mean", "temporal.bn_running_var": "mean",
    }
    tiny_config = {"l1_coefficient": 0.01, "dilations": (1, 2)}  # the conv mixer (naming dilations picks it)

    def __init__(self, cfg: MTSAEConfig) -> None:
        super().__init__(cfg)
        if cfg.mixer == "conv":
            self.temporal = TemporalMixer(
                cfg.d_sae, cfg.dilations, cfg.kernel_size, cfg.padding, cfg.bn_momentum, cfg.bn_eps, cfg.gate_init
            )
        if cfg.activation == "batchtopk":  # as BatchTopKSAE: -1 before training = plain ReLU in eval
            self.register_buffer("threshold", torch.tensor(-1.0))
            self.register_buffer("threshold_updates", torch.tensor(0.0))

    @classmethod
    def resolve_options(cls, options: dict[str, Any], *, d_sae: Any, target_l0: Any,
                        recommend: bool) -> tuple[dict[str, Any], Any]:
        """Without a preset and without a conv-mixer option: the recommended bank (presets.RECOMMENDED_MTSAE)
        with k = min(RECOMMENDED_K, d_sae // 4). A TopK-style MTSAE sets L0 by k: ``--target-l0 L`` is k = round(L)."""
        from mtsae.train.presets import CONV_MIXER_OPTIONS, RECOMMENDED_K, RECOMMENDED_MTSAE

        explicit_k = options.get("k")
        recommended = recommend and not CONV_MIXER_OPTIONS & set(options)  # naming the conv mixer: its own defaults
        options = {**RECOMMENDED_MTSAE, **options} if recommended else dict(options)
        if isinstance(target_l0, (int, float)) and not isinstance(target_l0, bool) and target_l0 >= 0.5 \
                and options.get("activation") in ("topk", "batchtopk"):
            k = round(target_l0)
            if explicit_k is not None and explicit_k != k:
                raise MtsaeError(f"--target-l0 {target_l0} and --k {explicit_k} disagree; a "
                                 f"{options['activation']} MTSAE sets its L0 by k: give one of them")
            options["k"], target_l0 = k, None
        if recommended and "k" not in options and isinstance(d_sae, int) and not isinstance(d_sae, bool):
            options["k"] = max(3, min(RECOMMENDED_K, d_sae // 4))
        return options, target_l0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "temporal" in self._modules:  # absent while the base __init__ runs, and with the bank mixer
            self.temporal.reset_parameters()

    def encode_full(self, x: torch.Tensor) -> Encoded:
        self.check_input(x)
        mixed = mix_over_time(self.cfg, self._modules.get("temporal"), self.pre_activations(x))
        return Encoded(sparsify(mixed, self.cfg, self._buffers.get("threshold"), self.training), mixed)

    @torch.no_grad()
    def update_training_state_(self, enc: Encoded) -> None:
        super().update_training_state_(enc)
        if self.cfg.activation == "batchtopk":
            update_batchtopk_threshold_(self.threshold, self.threshold_updates, enc.codes, self.cfg.threshold_beta)

    def penalties(self, x, enc, recon, sparsity_scale, dead_mask) -> dict[str, Term]:
        terms = {"sep": Term(self.temporal_loss(x, enc.codes), self.cfg.cos_coefficient)}
        if self.cfg.activation == "relu":  # TopK-style codes set L0 by k, as their per-token twins
            terms["l1"] = Term(losses.l1_penalty(enc.codes), self.cfg.l1_coefficient * sparsity_scale)
        else:
            k_aux = losses.resolve_k_aux(self.cfg.k_aux, self.cfg.d_in)
            aux = losses.auxk_loss(x, recon, enc.pre, dead_mask, self.W_dec, k_aux)
            terms["auxk"] = Term(aux, self.cfg.auxk_coefficient)
        return terms

    def temporal_loss(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``V · L_temporal`` of the module docstring (logged as ``sep``)."""
        fn = losses.adjacent_cosine if self.cfg.temporal_loss == "separation" else losses.adjacent_change
        value = fn(codes)
        return value * losses.input_variance(x) if self.cfg.temporal_loss_scale == "variance" else value


def mix_over_time(cfg: MTSAEConfig, temporal: TemporalMixer | None, pre: torch.Tensor) -> torch.Tensor:
    """``pre`` [B, T, d_sae] mixed over time by the config's mixer; [N, d_sae] is N sequences of length 1.

    Shared with the SAELens class (mtsae.saelens), so both encode alike.
    """
    pre_BTF = pre if pre.dim() == 3 else pre.unsqueeze(1)
    if cfg.mixer == "bank":
        mixed = bank_mix(pre_BTF, cfg.widths, cfg.padding)
    else:
        if temporal.training and pre_BTF.shape[0] * pre_BTF.shape[1] < 2:
            raise MtsaeError(
                "a training-mode MTSAE needs at least 2 tokens per batch for its BatchNorm statistics; "
                "call sae.eval() to encode a single token"
            )
        mixed = temporal(pre_BTF)
    return mixed if pre.dim() == 3 else mixed.squeeze(1)


def sparsify(mixed: torch.Tensor, cfg: MTSAEConfig, threshold: torch.Tensor | None = None,
             training: bool = False) -> torch.Tensor:
    """The codes of the mixed pre-activations: ReLU, TopK (per group for the bank), or BatchTopK
    (batch-wide in training, the learned ``threshold`` in eval)."""
    if cfg.activation == "topk" and cfg.mixer == "bank":
        return grouped_topk_relu(mixed, group_sizes(cfg.d_sae, len(cfg.widths)), cfg.group_budgets())
    if cfg.activation == "topk":
        return topk_relu(mixed, cfg.k)
    if cfg.activation == "batchtopk" and training:
        return batch_topk_relu(mixed, cfg.k)
    if cfg.activation == "batchtopk":
        return mixed.relu() * (mixed > threshold).to(mixed.dtype)
    return mixed.relu()
