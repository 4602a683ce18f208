"""One forward pass, every requested layer's residual stream.

``blocks.L.hook_resid_post`` is the output of decoder layer L, i.e.
``output_hidden_states[L + 1]`` of the full model except for the last layer,
whose hidden state transformers returns after the final norm (the hook keeps
the block output, as TransformerLens does). Forward hooks on the
decoder layers collect them all in one pass of a model that was truncated
after the deepest requested layer (see sources.load_truncated_model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtsae.errors import MtsaeError
from mtsae.harvest.sequences import Sequence, pad_batch


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder-layer list of a HF causal-LM body, whatever the wrapper."""
    for owner in (model, getattr(model, "model", None), getattr(model, "language_model", None)):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise MtsaeError(f"cannot find the decoder layers of {type(model).__name__}; mtsae supports HF decoder-only models")


class ResidualCapture:
    """Callable: (input_ids, attention_mask) -> {layer: [B, S, d_model] tensor on the model's device}."""

    def __init__(self, model: torch.nn.Module, layers: list[int]):
        self.model = model
        self.layers = sorted(layers)
        self._captured: dict[int, torch.Tensor] = {}
        blocks = decoder_layers(model)
        self._handles = [blocks[layer].register_forward_hook(self._hook(layer)) for layer in self.layers]

    def _hook(self, layer: int):
        def store(_module, _args, output):
            # transformers 5 returns a Tensor, 4.x a tuple whose first item is the hidden state.
            self._captured[layer] = output[0] if isinstance(output, tuple) else output

        return store

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        self._captured = {}
        self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        missing = [layer for layer in self.layers if layer not in self._captured]
        if missing:
            raise RuntimeError(f"forward pass did not reach layers {missing}")
        return self._captured

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def to_storage(acts: torch.Tensor) -> np.ndarray:
    """CPU NumPy array in the stored dtype: bfloat16 as its uint16 bits, bit for bit."""
    acts = acts.detach().cpu()
    if acts.dtype == torch.bfloat16:
        acts = acts.view(torch.uint16)
    return acts.numpy()


def check_finite(acts: torch.Tensor, attention_mask: torch.Tensor, layer: int, first_seq: int) -> None:
    """Refuse NaN/Inf activations, naming the first bad position (padding is ignored)."""
    bad = ~torch.isfinite(acts).all(dim=-1) & attention_mask.bool()
    if bad.any():
        b, pos = (int(i) for i in bad.nonzero()[0])
        raise MtsaeError(
            f"non-finite activation at layer {layer}, sequence {first_seq + b}, position {pos}; "
            f"try --dtype float32 or check the model weights"
        )


def batch_activations(capture: ResidualCapture, batch: list[Sequence], pad_id: int, device, first_sequence: int,
                      storage_dtype: str) -> tuple[dict[int, Any], int]:
    """Run one padded batch: ``({layer: [B, width, d] stored-dtype array}, real tokens)``; NaN/Inf is an error."""
    ids, mask = pad_batch(batch, pad_id)
    ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
    # Computed in the plan's compute dtype, rounded once here to the stored dtype (a no-op when they agree).
    acts = {layer: tensor.to(getattr(torch, storage_dtype)) for layer, tensor in capture(ids_t, mask_t).items()}
    for layer, tensor in acts.items():
        check_finite(tensor, mask_t, layer, first_sequence)
    return {layer: to_storage(tensor) for layer, tensor in acts.items()}, int(mask.sum())
