"""An mtsae checkpoint (or a SAELens one, converted) as a SAE-Bench ``BaseSAE``.

:class:`MtsaeBenchSAE` wraps any SAE from the registry (relu, topk, batchtopk,
jumprelu, mtsae) so that SAE-Bench's evals can run it as a custom SAE:

* ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec`` *are* the wrapped SAE's parameters
  (the same ``nn.Parameter`` objects, so ``.to()`` and SAE-Bench's weight-based
  metrics see exactly what the SAE computes with);
* ``encode`` / ``decode`` / ``forward`` call the wrapped SAE in **eval** mode
  (BatchNorm running statistics, the BatchTopK threshold), without gradients
  flowing into the weights (they are frozen: this is an inference adapter);
* ``cfg`` is SAE-Bench's ``CustomSAEConfig`` plus ``mtsae_*`` fields naming the
  checkpoint, its architecture and the cache it was trained on, so every
  result JSON SAE-Bench writes (``sae_cfg_dict``) says where it came from.

Shapes. SAE-Bench hands ``encode`` either ``[B, L, d]`` (core, sparse probing,
SCR/TPP, unlearning, autointerp) or ``[B, d]`` (absorption, RAVEL); a 1-D
``[d]`` is accepted as one token. The result keeps the leading dims
(unlearning's clamp hook indexes ``[:, 0, :]``, so 3-D must stay 3-D).

Temporal architectures (``sae.is_temporal``, i.e. MTSAE). ``[B, L, d]`` is B
sequences of L consecutive tokens: a token's codes depend on its neighbours
through the dilated convolutions. ``[B, d]`` is B *independent* tokens, each a
sequence of length one (see docs/architectures.md for what each padding mode
then computes). So ``encode(x.flatten(0, 1))`` differs from
``encode(x).flatten(0, 1)`` by design, and SAE-Bench's ``BaseSAE.test_sae``
(which asserts they are equal) cannot hold; :meth:`test_sae` checks the
invariants that do hold instead. Sparse probing zeroes the activations of
BOS/PAD/EOS positions *before* ``encode``: for MTSAE those zero rows still pass
through the encoder (``pre = -b_dec @ W_enc + b_enc``, a constant) and their
pre-activations leak into neighbouring positions through the convolutions
(right padding of short texts; circular padding also wraps the tail into the
first tokens). SAE-Bench then drops the zeroed positions' own codes. The
trainer zeroes special-token rows too, so the BOS case matches training; long
PAD tails do not occur in training windows.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from sae_bench.custom_saes.base_sae import BaseSAE
from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

import mtsae
from mtsae.errors import MtsaeError
from mtsae.evaluate.checkpoints import CheckpointInfo, read_checkpoint_info
from mtsae.train.base import SparseAutoencoder
from mtsae.train.checkpoint import load_checkpoint


@dataclasses.dataclass
class MtsaeSAEConfig(CustomSAEConfig):
    """SAE-Bench's config plus provenance; ``to_dict()`` (→ ``sae_cfg_dict`` in results) includes it."""

    mtsae_checkpoint: str = ""
    mtsae_saelens: str | None = None
    mtsae_architecture: str = ""
    mtsae_is_temporal: bool = False
    mtsae_is_causal: bool = True
    mtsae_trained_on_model: str = ""
    mtsae_cache_fingerprint: str | None = None
    mtsae_version: str = ""
    mtsae_sae_bench_version: str = ""


class MtsaeBenchSAE(BaseSAE):
    """SAE-Bench view of an mtsae SAE; build it with :func:`load_adapter` or directly."""

    def __init__(self, sae: SparseAutoencoder, info: CheckpointInfo, model_name: str,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        dtype = dtype or sae.W_dec.dtype
        super().__init__(sae.cfg.d_in, sae.cfg.d_sae, model_name, info.layer, device, dtype, info.hook_name)
        self.cfg = _bench_config(self.cfg, sae, info)
        self.sae = sae.eval()
        # Share, do not copy: SAE-Bench reads these names, the wrapped SAE computes with them.
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            setattr(self, name, getattr(sae, name))
        self.requires_grad_(False)
        self.to(dtype=dtype, device=device)

    @property
    def is_temporal(self) -> bool:
        return self.sae.is_temporal

    # ---------------------------------------------------------------- BaseSAE API
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x)
        if x.dim() == 1:  # one token
            return self.sae.encode(x.unsqueeze(0)).squeeze(0)
        return self.sae.encode(x)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(feature_acts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def train(self, mode: bool = True) -> MtsaeBenchSAE:
        # Inference only: the wrapped SAE keeps eval semantics whatever a caller asks.
        super().train(False)
        return self

    def to(self, *args: Any, **kwargs: Any) -> MtsaeBenchSAE:
        super().to(*args, **kwargs)
        self.cfg.dtype = str(self.W_dec.dtype).removeprefix("torch.")  # SAE-Bench reads the dtype from cfg
        self.cfg.device = str(self.W_dec.device)
        return self

    def _check_width(self, x: torch.Tensor) -> None:
        if x.dim() not in (1, 2, 3) or x.shape[-1] != self.cfg.d_in:
            raise MtsaeError(
                f"SAE {self.cfg.mtsae_checkpoint} expects [..., {self.cfg.d_in}] activations shaped [d], [B, d] "
                f"or [B, L, d], got {list(x.shape)}; is the evaluation model the one the SAE was trained on?"
            )

    # ---------------------------------------------------------------- self test
    @torch.no_grad()
    def test_sae(self, model_name: str) -> None:
        """SAE-Bench's own check for per-token SAEs; for temporal ones the invariants that hold.

        ``BaseSAE.test_sae`` asserts ``forward(flatten(acts)) == decode(encode(acts))``,
        which is false by design for MTSAE (flattening turns sequences into
        independent tokens). For temporal SAEs we run the same model and
        prompt but check :func:`temporal_invariants` instead.
        """
        if not self.is_temporal:
            return super().test_sae(model_name)
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(model_name, device=self.device)
        _, cache = model.run_with_cache(
            "The scientist named the population, after their distinctive horn, Ovid's Unicorn.",
            prepend_bos=True, names_filter=[self.cfg.hook_name], stop_at_layer=self.cfg.hook_layer + 1,
        )
        temporal_invariants(self, cache[self.cfg.hook_name].to(self.dtype))


def temporal_invariants(sae: MtsaeBenchSAE, acts_BLD: torch.Tensor, atol: float = 1e-5) -> None:
    """Assert what a temporal adapter guarantees for ``[B, L, d]`` input:

    * ``forward`` = ``decode ∘ encode`` with the input's shape;
    * sequences are independent (encoding the batch = encoding each row alone);
    * ``[N, d]`` input = ``[N, 1, d]`` input (each token its own length-1 sequence).
    """
    codes = sae.encode(acts_BLD)
    assert codes.shape == (*acts_BLD.shape[:-1], sae.cfg.d_sae)
    torch.testing.assert_close(sae(acts_BLD), sae.decode(codes), atol=atol, rtol=0)
    rows = torch.cat([sae.encode(acts_BLD[b : b + 1]) for b in range(acts_BLD.shape[0])])
    torch.testing.assert_close(rows, codes, atol=atol, rtol=0)
    flat = acts_BLD.flatten(0, 1)
    torch.testing.assert_close(sae.encode(flat), sae.encode(flat.unsqueeze(1)).squeeze(1), atol=atol, rtol=0)


def _bench_config(base: CustomSAEConfig, sae: SparseAutoencoder, info: CheckpointInfo) -> MtsaeSAEConfig:
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(CustomSAEConfig)}
    fields.update(
        architecture=sae.architecture,
        apply_b_dec_to_input=True,
        context_size=info.context_size,
        dataset_path=info.dataset or "",
        training_tokens=info.tokens_seen if info.tokens_seen is not None else -100_000,
        mtsae_checkpoint=info.label,
        mtsae_architecture=sae.architecture,
        mtsae_saelens=info.saelens,
        mtsae_is_temporal=sae.is_temporal,
        mtsae_is_causal=sae.cfg.is_causal,
        mtsae_trained_on_model=info.model_name,
        mtsae_cache_fingerprint=info.cache_fingerprint,
        mtsae_version=mtsae.__version__,
        mtsae_sae_bench_version=version("sae-bench"),
    )
    return MtsaeSAEConfig(**fields)


def load_adapter(source: str | Path | CheckpointInfo, model_name: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> MtsaeBenchSAE:
    """Load a checkpoint as a SAE-Bench SAE for ``model_name`` (default: the model it was trained on).

    ``source`` is an mtsae checkpoint (or run directory), a SAELens checkpoint
    folder, or the :class:`CheckpointInfo` of either or of a SAELens release
    (``mtsae.evaluate.saelens_checkpoints``). Raises ``MtsaeError`` when the
    decoder rows are not unit-norm (SAE-Bench's metrics assume they are).
    """
    info = source if isinstance(source, CheckpointInfo) else read_checkpoint_info(source)
    if info.saelens is not None:
        from mtsae.evaluate.saelens_checkpoints import load_saelens_sae

        sae = load_saelens_sae(info, device=device)
    else:
        sae, _ = load_checkpoint(info.path, device=device)
    adapter = MtsaeBenchSAE(sae, info, model_name or info.model_name, device=device, dtype=dtype)
    if not adapter.check_decoder_norms():
        norms = torch.linalg.vector_norm(adapter.W_dec.float(), dim=1)
        raise MtsaeError(
            f"checkpoint {info.label} has decoder rows that are not unit-norm (max |norm-1| = "
            f"{(norms - 1).abs().max().item():.2e}); SAE-Bench assumes unit-norm rows: renormalise and re-save it"
        )
    return adapter
