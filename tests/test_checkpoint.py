"""Checkpoint round trips (bit-exact) and SAELens interoperability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_arch_config, train_a_few_steps

from mtsae.errors import MtsaeError
from mtsae.train.base import SparseAutoencoder
from mtsae.train.checkpoint import (
    CFG_FILENAME,
    STATE_FILENAME,
    WEIGHTS_FILENAME,
    load_checkpoint,
    save_checkpoint,
)
from mtsae.train.registry import architecture_names, create_sae, get_architecture

D_IN, D_SAE = 16, 32
VARIANTS = [(n, tiny_arch_config(n)) for n in architecture_names()] + [
    ("mtsae", {"activation": "topk", "k": 4, "padding": "causal", "dilations": (1, 4, 16)}),
]
METADATA = {
    "model_name": "gemma-2-2b",
    "layer": 19,
    "hook_name": "blocks.19.hook_resid_post",
    "cache_fingerprint": "abc123",
    "tokens_seen": 123456,
    "final_metrics": {"mse": 0.25, "l0": 31.5},
    "mtsae_version": "0.1.0",
}
SAELENS_ARCHS = [n for n in architecture_names() if get_architecture(n).saelens_architecture]



def trained(name: str, overrides: dict, steps: int = 3, dtype=torch.float32) -> SparseAutoencoder:
    """A few real steps so thresholds, BN running stats and dead counters are non-trivial."""
    torch.manual_seed(0)
    sae = create_sae(name, d_in=D_IN, d_sae=D_SAE, **overrides).train()
    return train_a_few_steps(sae, (3, 12, D_IN), steps).to(dtype).eval()


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_round_trip_is_bit_exact(tmp_path, name, overrides, dtype):
    sae = trained(name, overrides, dtype=dtype)
    path = save_checkpoint(sae, tmp_path / "ckpt", METADATA)
    loaded, metadata = load_checkpoint(path)
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    assert metadata == METADATA
    assert not loaded.training
    original, restored = sae.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype, key
        assert torch.equal(original[key], restored[key]), key
    x = torch.randn(2, 12, D_IN).to(dtype)
    assert torch.equal(sae.encode(x), loaded.encode(x))
    assert torch.equal(sae(x), loaded(x))
    assert torch.equal(sae(x[0]), loaded(x[0]))


def test_layout_and_cfg(tmp_path):
    sae = trained("topk", {"k": 4})
    path = save_checkpoint(sae, tmp_path / "ckpt", METADATA)
    assert sorted(p.name for p in path.iterdir()) == sorted([CFG_FILENAME, WEIGHTS_FILENAME, STATE_FILENAME])
    cfg = json.loads((path / CFG_FILENAME).read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["rescale_acts_by_decoder_norm"] is False
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["apply_b_dec_to_input"]) == (D_IN, D_SAE, "float32", True)
    assert cfg["metadata"]["model_name"] == "gemma-2-2b" and cfg["metadata"]["hook_layer"] == 19
    assert cfg["mtsae"]["architecture"] == "topk" and cfg["mtsae"]["metadata"] == METADATA
    from safetensors.torch import load_file

    assert set(load_file(path / WEIGHTS_FILENAME)) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    assert set(load_file(path / STATE_FILENAME)) == {"tokens_since_fired"}


def test_mtsae_tensor_names(tmp_path):
    path = save_checkpoint(trained("mtsae", {}), tmp_path / "m", {})
    from safetensors.torch import load_file

    assert set(load_file(path / WEIGHTS_FILENAME)) == {
        "W_enc", "W_dec", "b_enc", "b_dec", "temporal.conv_weight", "temporal.bn_weight",
        "temporal.bn_bias", "temporal.bn_running_mean", "temporal.bn_running_var",
    }


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_every_file_gets_the_umasks_mode(tmp_path, umask):
    """safetensors writes 0600; a checkpoint in a shared folder must be as readable as the umask allows."""
    import os
    import stat

    old = os.umask(umask)
    try:
        path = save_checkpoint(trained("relu", {}, steps=1), tmp_path / "ckpt", {},
                               extra_files={"extra.txt": lambda target: target.write_text("x")})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert modes == dict.fromkeys([CFG_FILENAME, WEIGHTS_FILENAME, STATE_FILENAME, "extra.txt"], 0o666 & ~umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask


def test_overwrite_is_atomic_and_guarded(tmp_path):
    target = tmp_path / "ckpt"
    save_checkpoint(trained("relu", {}, steps=1), target, {"step": 1})
    save_checkpoint(trained("relu", {}, steps=2), target, {"step": 2})
    assert load_checkpoint(target).metadata == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp / old dirs left
    other = tmp_path / "not_a_checkpoint"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(MtsaeError, match="refusing to overwrite"):
        save_checkpoint(trained("relu", {}, steps=1), other, {})
    assert (other / "precious.txt").exists()


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(MtsaeError, match="JSON"):
        save_checkpoint(trained("relu", {}, steps=1), tmp_path / "c", {"when": object()})
    assert not list(tmp_path.iterdir())


def _edit_cfg(path: Path, edit) -> None:
    cfg = json.loads((path / CFG_FILENAME).read_text())
    edit(cfg)
    (path / CFG_FILENAME).write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c["mtsae"].update(architecture="gated"), "unknown SAE architecture"),
        (lambda c: c["mtsae"].update(format_version=99), "format"),
        (lambda c: c.pop("mtsae"), "not written by mtsae"),
        (lambda c: c["mtsae"]["config"].update(d_sae=D_SAE * 2), "inconsistent"),
        (lambda c: (c["mtsae"]["config"].update(d_sae=D_SAE * 2), c.update(d_sae=D_SAE * 2)), "shape"),
        (lambda c: c["mtsae"]["config"].update(bogus=1), "unknown"),
    ],
    ids=["unknown-arch", "format-version", "foreign", "inconsistent", "shape-mismatch", "unknown-field"],
)
def test_load_refuses_bad_checkpoints(tmp_path, edit, match):
    path = save_checkpoint(trained("relu", {}, steps=1), tmp_path / "c", {})
    _edit_cfg(path, edit)
    with pytest.raises(MtsaeError, match=match):
        load_checkpoint(path)


def test_load_refuses_missing_or_incomplete(tmp_path):
    with pytest.raises(MtsaeError, match="not an SAE checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    path = save_checkpoint(trained("relu", {}, steps=1), tmp_path / "c", {})
    (path / STATE_FILENAME).unlink()
    with pytest.raises(MtsaeError, match="missing"):
        load_checkpoint(path)


def test_load_refuses_architecture_swap(tmp_path):
    """A jumprelu file relabelled as relu has an unexpected 'threshold' tensor."""
    path = save_checkpoint(trained("jumprelu", tiny_arch_config("jumprelu"), steps=1), tmp_path / "c", {})
    _edit_cfg(path, lambda c: c["mtsae"].update(architecture="relu", config={"d_in": D_IN, "d_sae": D_SAE}))
    with pytest.raises(MtsaeError, match="do not match"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", SAELENS_ARCHS)
def test_saelens_loads_baselines(tmp_path, name):
    sae_lens = pytest.importorskip("sae_lens", reason="sae_lens is not installed")
    ours = trained(name, tiny_arch_config(name))
    path = save_checkpoint(ours, tmp_path / name, METADATA)
    theirs = sae_lens.SAE.load_from_disk(str(path), device="cpu")
    assert theirs.cfg.architecture() == ours.saelens_architecture
    assert theirs.cfg.metadata.model_name == "gemma-2-2b"
    assert theirs.cfg.metadata.hook_name == "blocks.19.hook_resid_post"
    x = torch.randn(2, 12, D_IN)
    with torch.no_grad():
        codes = ours.encode(x)
        torch.testing.assert_close(theirs.encode(x), codes, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(theirs.decode(codes), ours.decode(codes), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-6, atol=1e-6)
    if name == "batchtopk":
        assert ours.threshold > 0  # a trained threshold, not the -1 sentinel
