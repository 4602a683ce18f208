"""mtsae.saelens: SAELens's own loader opens every architecture mtsae writes."""

from __future__ import annotations

import json

import pytest
import torch

from test_checkpoint import METADATA, VARIANTS, trained

from mtsae.errors import MtsaeError
from mtsae.train.checkpoint import CFG_FILENAME, save_checkpoint

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install -e '.[test]')")
import mtsae.saelens  # noqa: E402  (registers "mtsae" with SAELens)

MTSAE_VARIANTS = VARIANTS + [
    ("mtsae", {"padding": "zeros", "dilations": (1, 2), "kernel_size": 5}),
    ("mtsae", {"padding": "replicate"}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(MTSAE_VARIANTS)]


@pytest.mark.parametrize("name,overrides", MTSAE_VARIANTS, ids=IDS)
def test_saelens_opens_every_architecture(tmp_path, name, overrides):
    ours = trained(name, overrides)
    path = save_checkpoint(ours, tmp_path / name, METADATA)
    theirs = sae_lens.SAE.load_from_disk(str(path), device="cpu")
    assert theirs.cfg.metadata.hook_name == METADATA["hook_name"]
    x_BTD = torch.randn(3, 12, ours.cfg.d_in)
    with torch.no_grad():
        for x in (x_BTD, x_BTD.flatten(0, 1)):  # sequences, then independent tokens
            codes = ours.encode(x)
            assert (codes != 0).any()
            torch.testing.assert_close(theirs.encode(x), codes, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(theirs.decode(codes), ours.decode(codes), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(theirs(x), ours(x), rtol=1e-6, atol=1e-6)


def test_saelens_mtsae_is_temporal_and_keeps_running_statistics(tmp_path):
    ours = trained("mtsae", {})
    theirs = sae_lens.SAE.load_from_disk(str(save_checkpoint(ours, tmp_path / "m", METADATA)))
    assert isinstance(theirs, mtsae.saelens.MTSAESAELens)
    x = torch.randn(2, 12, ours.cfg.d_in)
    before = theirs.temporal.bn_running_mean.clone()
    theirs.train()  # an inference class: still the running statistics, never updated
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-6, atol=1e-6)
        # a token's codes depend on its neighbours: the sequence encoding is not the per-token one
        assert not torch.allclose(theirs.encode(x).flatten(0, 1), theirs.encode(x.flatten(0, 1)))
    assert torch.equal(theirs.temporal.bn_running_mean, before)


def test_saelens_bf16_mtsae(tmp_path):
    ours = trained("mtsae", {"activation": "topk", "k": 4}, dtype=torch.bfloat16)
    theirs = sae_lens.SAE.load_from_disk(str(save_checkpoint(ours, tmp_path / "m", METADATA)))
    assert theirs.W_dec.dtype == torch.bfloat16
    x = torch.randn(2, 12, ours.cfg.d_in, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x))


def test_saelens_save_model_round_trips_to_mtsae(tmp_path):
    """A SAELens re-save keeps the mtsae section, so both libraries reopen it."""
    ours = trained("mtsae", {"padding": "causal"})
    theirs = sae_lens.SAE.load_from_disk(str(save_checkpoint(ours, tmp_path / "m", METADATA)))
    theirs.save_model(tmp_path / "resaved")
    again = sae_lens.SAE.load_from_disk(str(tmp_path / "resaved"))
    x = torch.randn(2, 12, ours.cfg.d_in)
    with torch.no_grad():
        torch.testing.assert_close(again.encode(x), ours.encode(x), rtol=1e-6, atol=1e-6)


def test_saelens_refuses_a_broken_mtsae_section(tmp_path):
    path = save_checkpoint(trained("mtsae", {}, steps=1), tmp_path / "m", METADATA)
    cfg = json.loads((path / CFG_FILENAME).read_text())
    cfg["mtsae"]["config"]["d_sae"] = 7
    (path / CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(MtsaeError, match="inconsistent"):
        sae_lens.SAE.load_from_disk(str(path))
    cfg["mtsae"] = {"architecture": "relu"}
    (path / CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(MtsaeError, match="no mtsae section"):
        sae_lens.SAE.load_from_disk(str(path))


def test_register_is_idempotent():
    mtsae.saelens.register()
    from sae_lens.registry import get_sae_class

    assert get_sae_class("mtsae")[0] is mtsae.saelens.MTSAESAELens
