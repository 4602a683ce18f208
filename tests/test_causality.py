"""No future leak: an SAE spliced into the embedded model must leave every logit before a changed token alone.

The model is built the way SAE-Bench builds it offline (its module's ``HookedTransformer`` name, patched
by :func:`mtsae.evaluate.patches.offline`), the SAE is the SAE-Bench adapter of a saved checkpoint, and it
is spliced in by SAE-Bench's own code: core's ``get_recons_loss`` (per-token KL with the SAE in place) and
unlearning's clamp hook ``anthropic_clamp_resid_SAE_features`` (the logits it generates from).
"""

from __future__ import annotations

import functools

import pytest
import torch

from mtsae.errors import MtsaeError
from mtsae.evaluate import embedded_mirror
from mtsae.evaluate.adapter import load_adapter
from mtsae.evaluate.config import EvalConfig
from mtsae.evaluate.offline import load_mirror
from mtsae.evaluate.patches import offline
from mtsae.evaluate.run import evaluate
from mtsae.train.checkpoint import save_checkpoint
from mtsae.train.registry import architecture_names
from mtsae.train.temporal import PADDING_MODES, is_causal
from conftest import tiny_arch_config
from test_eval_support import metadata, trained_sae

LAYER, LENGTH, CHANGED = 5, 128, 64  # core's 128-token contexts; the token at 64 is replaced
VARIANTS = [(name, tiny_arch_config(name)) for name in architecture_names() if name != "mtsae"] + [
    ("mtsae", {"padding": padding}) for padding in PADDING_MODES
] + [("mtsae", {"padding": "causal", "activation": "topk", "k": 8, "kernel_size": 4, "dilations": (1, 4, 16)})]
IDS = [name + "".join(f"-{v}" for k, v in o.items() if k in ("padding", "activation")) for name, o in VARIANTS]


@pytest.fixture(scope="module")
def model():
    import sae_bench.evals.core.main as core

    mirror = load_mirror(embedded_mirror.ensure_embedded_mirror(embedded_mirror.rows_needed(40, 20)))
    with offline(mirror):  # exactly how SAE-Bench's core eval gets its model
        return core.HookedTransformer.from_pretrained_no_processing("embedded", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tokens(model):
    """Two prompts and the same prompts with token ``CHANGED`` replaced."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(10, 200, (2, LENGTH), generator=g)
    clean[:, 0] = model.tokenizer.bos_token_id
    changed = clean.clone()
    changed[:, CHANGED] = (clean[:, CHANGED] + 7) % 200 + 10
    return clean, changed


def _core_kl(adapter, model, batch: torch.Tensor) -> torch.Tensor:
    """Per-token KL(model || model with the SAE spliced in), from SAE-Bench core's own function."""
    from sae_bench.evals.core.main import get_recons_loss

    with torch.no_grad():
        metrics = get_recons_loss(adapter, model, batch, None, compute_kl=True, compute_ce_loss=False)
    return metrics["kl_div_with_sae"]


def _unlearning_logits(adapter, model, batch: torch.Tensor) -> torch.Tensor:
    """Logits with SAE-Bench unlearning's clamp hook at the SAE's layer (features 0-3 clamped to -20)."""
    from sae_bench.evals.unlearning.utils.intervention import anthropic_clamp_resid_SAE_features

    hook = functools.partial(anthropic_clamp_resid_SAE_features, sae=adapter, features_to_ablate=[0, 1, 2, 3],
                             multiplier=20)
    with torch.no_grad():
        return model.run_with_hooks(batch, fwd_hooks=[(adapter.cfg.hook_name, hook)])


def future_leak(adapter, model, clean: torch.Tensor, changed: torch.Tensor) -> dict[str, float]:
    """Largest change, at positions before ``CHANGED``, of what each splice path computes."""
    kl = (_core_kl(adapter, model, clean) - _core_kl(adapter, model, changed))[:, :CHANGED]
    logits = (_unlearning_logits(adapter, model, clean) - _unlearning_logits(adapter, model, changed))[:, :CHANGED]
    return {"core_kl": kl.abs().max().item(), "unlearning_logits": logits.abs().max().item()}


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=IDS)
def test_spliced_sae_never_sees_later_tokens(tmp_path, model, tokens, name, overrides):
    path = save_checkpoint(trained_sae(name, overrides), tmp_path / "ckpt", metadata(layer=LAYER))
    adapter = load_adapter(path, model_name="embedded")
    clean, changed = tokens
    with torch.no_grad():  # the model itself is causal: without an SAE nothing before CHANGED moves
        assert torch.equal(model(clean)[:, :CHANGED], model(changed)[:, :CHANGED])
    leak = future_leak(adapter, model, clean, changed)
    if adapter.sae.cfg.is_causal:
        assert leak == {"core_kl": 0.0, "unlearning_logits": 0.0}
    else:  # the check detects the leak on both paths (measured: KL 2e-4 to 6e-4, logits 4e-3 to 0.2)
        assert leak["core_kl"] > 1e-6 and leak["unlearning_logits"] > 1e-4, leak
    assert adapter.cfg.mtsae_is_causal == adapter.sae.cfg.is_causal


def test_causal_is_the_default_and_presets_keep_the_seed_padding():
    from mtsae.train.presets import get_preset
    from mtsae.train.registry import create_sae

    assert create_sae("mtsae", d_in=8, d_sae=16).cfg.padding == "causal"
    assert {run: get_preset(run).arch_config["padding"] for run in ("run1", "run2", "run3")} == {
        "run1": "circular", "run2": "replicate", "run3": "replicate"}


@pytest.mark.parametrize("padding", PADDING_MODES)
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_is_causal(padding, kernel_size):
    """Only causal padding is, or a one-tap kernel (reads t alone) under any padding."""
    assert is_causal(kernel_size, (1, 2), padding) == (padding == "causal" or kernel_size == 1)


def test_eval_refuses_a_non_causal_sae_unless_allowed(tmp_path):
    """One error line before any model loads; with --allow-non-causal the summary flags it (sparse probing
    alone does not splice the SAE into the model, so it needs no permission)."""
    leaky = save_checkpoint(trained_sae("mtsae", {"padding": "replicate"}), tmp_path / "leaky",
                            metadata(layer=LAYER))
    with pytest.raises(MtsaeError, match=r"leaky: not causal .* core and unlearning .* --allow-non-causal"):
        evaluate(EvalConfig(checkpoints=[str(leaky)], out=str(tmp_path / "out")), log=lambda _l: None)
    from mtsae.evaluate.checkpoints import read_checkpoint_info
    from mtsae.evaluate.run import _check_causal

    info = read_checkpoint_info(leaky)
    assert info.describe()["causal"] is False
    lines: list[str] = []
    _check_causal(EvalConfig(checkpoints=[str(leaky)], out="o", evals=["sparse_probing", "absorption"]), [info],
                  lines.append)
    _check_causal(EvalConfig(checkpoints=[str(leaky)], out="o", evals=["core"], allow_non_causal=True), [info],
                  lines.append)
    assert len(lines) == 1 and "not causal" in lines[0] and "core" in lines[0]
