"""Model shapes, and a TransformerLens model built from a local Gemma-2 directory.

SAE-Bench builds its model itself with
``HookedTransformer.from_pretrained_no_processing(name)``, which needs the hub.
Offline, :func:`load_hooked_transformer` builds the same object from a local
Hugging Face directory: a ``HookedTransformerConfig`` filled the way
transformer_lens fills it for google/gemma-2-* (``loading_from_pretrained``'s
Gemma-2 branch), but with the sizes read from the directory's config, then
transformer_lens's own ``convert_gemma_weights``. No weight processing (no
LayerNorm folding or centring), as ``from_pretrained_no_processing`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mtsae.errors import MtsaeError

_ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise MtsaeError(f"unknown dtype {name!r}; choose one of {', '.join(_DTYPES)}") from None


@dataclass(frozen=True)
class ModelDims:
    """What a checkpoint must agree with: residual width, depth, positions."""

    d_model: int
    n_layers: int
    n_ctx: int


def local_model_dims(path: str | Path) -> ModelDims:
    config = _hf_config(path)
    return ModelDims(config.hidden_size, config.num_hidden_layers, config.max_position_embeddings)


def hub_model_dims(name: str) -> ModelDims:
    """Shapes transformer_lens will use for ``name`` (its tables: no download for Gemma models)."""
    from transformer_lens import loading_from_pretrained as loading

    try:
        cfg = loading.convert_hf_model_config(loading.get_official_model_name(name))
    except Exception as exc:  # unknown name, or a hub lookup that failed
        raise MtsaeError(
            f"transformer_lens cannot resolve model {name!r} ({str(exc).splitlines()[0][:200]}); "
            "use a name transformer_lens knows (e.g. gemma-2-2b) or --offline with a local copy"
        ) from None
    return ModelDims(cfg["d_model"], cfg["n_layers"], cfg["n_ctx"])


def _hf_config(path: str | Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise MtsaeError(f"cannot read the model config in {path}: {str(exc).splitlines()[0][:200]}") from None


def hooked_transformer_config(hf_config, tl_name: str, tokenizer_path: str, device: str, dtype: torch.dtype):
    """transformer_lens's Gemma-2 settings with the sizes of ``hf_config`` (a ``Gemma2Config``)."""
    from transformer_lens import HookedTransformerConfig

    c = hf_config
    if "Gemma2ForCausalLM" not in (c.architectures or []):
        raise MtsaeError(
            f"offline evaluation builds Gemma-2 models only; {tokenizer_path} is {c.architectures}"
        )
    rope = getattr(c, "rope_parameters", None) or {}
    return HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn=c.hidden_activation, initializer_range=c.initializer_range, normalization_type="RMS",
        rotary_base=float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))), rotary_dim=c.head_dim,
        positional_embedding_type="rotary", use_attn_scale=True, attn_scale=float(c.query_pre_attn_scalar) ** 0.5,
        n_key_value_heads=c.num_key_value_heads, window_size=c.sliding_window, use_local_attn=True,
        attn_types=[_ATTN_TYPES[t] for t in c.layer_types], attn_scores_soft_cap=c.attn_logit_softcapping,
        output_logits_soft_cap=c.final_logit_softcapping, gated_mlp=True, final_rms=True,
        use_normalization_before_and_after=True, original_architecture="Gemma2ForCausalLM",
        tokenizer_name=tokenizer_path, model_name=tl_name, default_prepend_bos=True,
        dtype=dtype, device=device, init_weights=False,
    )


def load_hooked_transformer(path: str | Path, tl_name: str, device: str | None = None,
                            dtype: str | torch.dtype = torch.float32):
    """What ``HookedTransformer.from_pretrained_no_processing`` returns, built from a local Gemma-2 dir.

    ``tl_name`` becomes ``model.cfg.model_name`` (SAE-Bench keys some choices,
    e.g. the unlearning chat template, on it).
    """
    import warnings

    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(dtype)
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    cfg = hooked_transformer_config(hf_model.config, tl_name, str(path), device, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer's v3 migration notice
        model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(
        convert_gemma_weights(hf_model, cfg), fold_ln=False, center_writing_weights=False,
        center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model.eval()
