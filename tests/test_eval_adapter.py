"""The SAE-Bench adapter over every registered architecture: norms, shapes, sharing, SAE-Bench's own callers."""

from __future__ import annotations

import pytest
import torch

from mtsae.errors import MtsaeError
from mtsae.evaluate.adapter import MtsaeBenchSAE, load_adapter, temporal_invariants
from mtsae.train.checkpoint import save_checkpoint
from test_eval_support import ARCH_IDS, ARCH_VARIANTS, D_MODEL, metadata, trained_sae

B, L = 3, 20
variants = pytest.mark.parametrize("name,overrides", ARCH_VARIANTS, ids=ARCH_IDS)


@pytest.fixture
def adapter(tmp_path, name, overrides) -> MtsaeBenchSAE:
    path = save_checkpoint(trained_sae(name, overrides), tmp_path / "ckpt", metadata(layer=19))
    return load_adapter(path, model_name="embedded")


def acts(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, D_MODEL, generator=torch.Generator().manual_seed(seed)) * 3


@variants
def test_decoder_norms_and_config(adapter, name):
    assert adapter.check_decoder_norms()
    cfg = adapter.cfg
    assert (cfg.d_in, cfg.d_sae, cfg.hook_layer, cfg.hook_name) == (D_MODEL, 96, 19, "blocks.19.hook_resid_post")
    assert cfg.model_name == "embedded" and cfg.mtsae_architecture == name
    assert cfg.mtsae_cache_fingerprint == "f" * 64 and cfg.mtsae_checkpoint.endswith("ckpt")
    assert cfg.to_dict()["mtsae_is_temporal"] == (name == "mtsae")


@variants
def test_shapes_and_outputs_match_the_wrapped_sae(adapter):
    sae = adapter.sae
    x3, x2 = acts(B, L), acts(B * L)
    with torch.no_grad():
        assert adapter.encode(x3).shape == (B, L, 96)
        assert adapter.encode(x2).shape == (B * L, 96)
        assert adapter.encode(x2[0]).shape == (96,)
        assert adapter.decode(adapter.encode(x3)).shape == (B, L, D_MODEL)
        torch.testing.assert_close(adapter.encode(x3), sae.encode(x3), rtol=0, atol=0)
        torch.testing.assert_close(adapter(x3), sae(x3), rtol=0, atol=0)
        torch.testing.assert_close(adapter(x2), sae(x2), rtol=0, atol=0)
        torch.testing.assert_close(adapter.encode(x2[0]), sae.encode(x2[:1])[0], rtol=0, atol=0)
    with pytest.raises(MtsaeError, match="expects"):
        adapter.encode(torch.randn(B, L, D_MODEL + 1))


@variants
def test_weights_are_shared_and_follow_to(adapter):
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert getattr(adapter, name) is getattr(adapter.sae, name)
    adapter.to(dtype=torch.bfloat16)
    assert adapter.W_dec is adapter.sae.W_dec and adapter.sae.W_enc.dtype == torch.bfloat16
    assert adapter.cfg.dtype == "bfloat16" and adapter.check_decoder_norms()
    assert adapter.encode(acts(B, L).bfloat16()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in adapter.parameters())
    adapter.train()
    assert not adapter.sae.training  # inference semantics whatever a caller asks


@variants
def test_flattening_is_identity_only_for_per_token_saes(adapter):
    x = acts(B, L)
    with torch.no_grad():
        flat = adapter(x.flatten(0, 1)).reshape(x.shape)
        whole = adapter.decode(adapter.encode(x))
        if adapter.is_temporal:
            assert not torch.allclose(flat, whole, atol=1e-4)  # SAE-Bench's test_sae equality cannot hold
            temporal_invariants(adapter, x)
        else:
            torch.testing.assert_close(flat, whole, rtol=1e-5, atol=1e-5)  # what BaseSAE.test_sae asserts


@variants
def test_sae_bench_callers(adapter):
    """The SAE-Bench functions that call encode: unlearning's clamp hook, absorption, sparse probing, loading."""
    from sae_bench.evals.absorption.k_sparse_probing import _get_sae_acts
    from sae_bench.evals.unlearning.utils.intervention import anthropic_clamp_resid_SAE_features
    from sae_bench.sae_bench_utils.activation_collection import get_sae_meaned_activations
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

    x = acts(B, L)
    out = anthropic_clamp_resid_SAE_features(x.clone(), None, adapter, features_to_ablate=[0, 5], multiplier=20)
    assert out.shape == x.shape
    assert _get_sae_acts(adapter, acts(7), batch_size=4).shape == (7, 96)
    x[:, 0] = 0  # sparse probing zeroes BOS (and PAD/EOS) rows before encoding
    x[0, -5:] = 0
    meaned = get_sae_meaned_activations({"cls": x}, adapter, sae_batch_size=2)["cls"]
    assert meaned.shape == (B, 96) and torch.isfinite(meaned).all()
    sae_id, loaded, _ = load_and_format_sae("release", adapter, "cpu")
    assert sae_id == "custom_sae" and loaded.cfg.metadata.hook_name == "blocks.19.hook_resid_post"


def test_zeroed_positions_reach_temporal_neighbours():
    """MTSAE: a zeroed (special-token) row changes its neighbours' codes; per-token SAEs are unaffected.

    Causal padding (the default) reaches only later steps, t + j·r for taps j = 0..2 and rates 1, 2, 4."""
    x = acts(1, L)
    zeroed = x.clone()
    zeroed[0, 10] = 0
    for name, overrides in (("mtsae", {}), ("mtsae", {"padding": "circular"}), ("relu", {})):
        sae = trained_sae(name, overrides)
        with torch.no_grad():
            changed = set(((sae.encode(x) - sae.encode(zeroed)).abs().sum(-1)[0] > 0).nonzero().flatten().tolist())
        if name == "relu":
            assert changed == {10}
        elif overrides:
            assert {9, 10, 11} <= changed  # centred taps: dilation 1 reaches t±1 (2 and 4 reach further)
        else:
            assert changed == {10, 11, 12, 14, 18}


def test_refuses_unnormalised_decoder(tmp_path):
    sae = trained_sae("relu", {})
    with torch.no_grad():
        sae.W_dec.mul_(1.5)
    path = save_checkpoint(sae, tmp_path / "c", metadata())
    with pytest.raises(MtsaeError, match="not unit-norm"):
        load_adapter(path)


def test_refuses_checkpoint_without_model_or_layer(tmp_path):
    path = save_checkpoint(trained_sae("relu", {}), tmp_path / "c", {"layer": 5})
    with pytest.raises(MtsaeError, match="which model"):
        load_adapter(path)
    path = save_checkpoint(trained_sae("relu", {}), tmp_path / "d", {"model_name": "embedded"})
    with pytest.raises(MtsaeError, match="layer"):
        load_adapter(path)
