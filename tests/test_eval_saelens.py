"""`mtsae eval` on SAEs mtsae did not write: SAELens-saved folders and SAELens releases."""

from __future__ import annotations

import json

import pytest
import torch

from mtsae.errors import MtsaeError
from mtsae.evaluate.adapter import load_adapter
from mtsae.evaluate.checkpoints import read_checkpoint_info
from mtsae.evaluate.config import EvalConfig
from mtsae.evaluate.run import evaluate
from mtsae.evaluate.saelens_checkpoints import release_info
from mtsae.train.checkpoint import save_checkpoint
from test_eval_support import D_MODEL, metadata, save, trained_sae

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install -e '.[test]')")

BASELINES = ["relu", "topk", "batchtopk", "jumprelu"]
GEMMA_SCOPE = "gemma-scope-2b-pt-res-canonical:layer_19/width_16k/canonical"


def saelens_resave(tmp_path, name: str):
    """Our checkpoint, opened and saved again by SAELens itself (no mtsae section, no mtsae_state file)."""
    ours = save(tmp_path, name)
    theirs = sae_lens.SAE.load_from_disk(str(ours))
    theirs.save_model(tmp_path / f"saelens-{name}")
    return ours, theirs, tmp_path / f"saelens-{name}"


def acts(*shape):
    return torch.randn(*shape, D_MODEL, generator=torch.Generator().manual_seed(3)) * 3


@pytest.mark.parametrize("name", BASELINES)
def test_a_saelens_saved_baseline_encodes_as_saelens_does(tmp_path, name):
    ours, theirs, folder = saelens_resave(tmp_path, name)
    assert "mtsae" not in json.loads((folder / "cfg.json").read_text())
    info = read_checkpoint_info(folder)
    assert info.saelens == str(folder.resolve()) and (info.layer, info.d_in, info.d_sae) == (5, D_MODEL, 96)
    adapter = load_adapter(folder)
    assert adapter.cfg.mtsae_saelens == str(folder.resolve())
    with torch.no_grad():
        for x in (acts(3, 20), acts(60)):
            codes = theirs.encode(x)
            assert (codes != 0).any()
            torch.testing.assert_close(adapter.encode(x), codes, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(adapter(x), theirs(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(adapter.encode(x), load_adapter(ours).encode(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk-rescaled"])
def test_saelens_native_layouts_are_rewritten_exactly(tmp_path, kind):
    """Gemma Scope's apply_b_dec_to_input=False and non-unit decoder rows, folded the way SAELens folds them."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    meta = sae_lens.saes.sae.SAEMetadata(**metadata(layer=5))
    common = dict(d_in=D_MODEL, d_sae=48, apply_b_dec_to_input=False, metadata=meta)
    theirs = {"standard": lambda: StandardSAE(StandardSAEConfig(**common)),
              "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(**common)),
              "topk-rescaled": lambda: TopKSAE(TopKSAEConfig(k=6, rescale_acts_by_decoder_norm=True, **common))}[kind]()
    with torch.no_grad():
        for param in theirs.parameters():
            param.add_(torch.rand_like(param) * 0.5)  # biases, thresholds and row norms away from their init
    x = acts(3, 20)
    with torch.no_grad():
        expected_codes, expected_recon = theirs.encode(x), theirs(x)
    theirs.save_model(tmp_path / kind)
    adapter = load_adapter(tmp_path / kind)
    with torch.no_grad():
        assert (expected_codes != 0).any()
        # folding divides codes by the decoder norms; the reconstruction is unchanged
        torch.testing.assert_close(adapter(x), expected_recon, rtol=1e-4, atol=1e-4)
        assert torch.equal(adapter.encode(x) != 0, expected_codes != 0)


def test_negative_jumprelu_thresholds_act_as_zero(tmp_path):
    """SAELens applies a ReLU before its threshold mask; a negative threshold must not let negative codes through."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(0)
    theirs = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_MODEL, d_sae=48, metadata=sae_lens.saes.sae.SAEMetadata(**metadata())))
    with torch.no_grad():
        theirs.threshold.fill_(-0.3)
        theirs.W_dec.div_(theirs.W_dec.norm(dim=-1, keepdim=True))
    theirs.save_model(tmp_path / "neg")
    x = acts(3, 20)
    with torch.no_grad():
        codes = load_adapter(tmp_path / "neg").encode(x)
        assert codes.min() >= 0
        torch.testing.assert_close(codes, theirs.encode(x), rtol=1e-5, atol=1e-5)


def test_eval_runs_a_saelens_folder_beside_ours(tmp_path):
    ours = save(tmp_path, "topk")
    (tmp_path / "x").mkdir()
    _, _, folder = saelens_resave(tmp_path / "x", "jumprelu")
    summary = evaluate(EvalConfig(checkpoints=[str(ours), str(folder)], out=str(tmp_path / "out"), evals=["core"]),
                       log=lambda _: None)
    assert [(r["release"], r["status"]) for r in summary.rows] == [("topk-L5", "ok"), ("saelens-jumprelu", "ok")]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())["checkpoints"]
    assert saved[1]["saelens"] == str(folder.resolve()) and saved[0]["saelens"] is None
    result = json.loads((tmp_path / "out" / "core" / "saelens-jumprelu_custom_sae_eval_results.json").read_text())
    assert result["sae_cfg_dict"]["mtsae_architecture"] == "jumprelu"
    assert summary.rows[1]["metrics"]["l0"] > 0


def test_release_config_comes_from_saelens_offline():
    """Gemma Scope's config is derived from its name by SAELens, no hub needed."""
    info = release_info(GEMMA_SCOPE)
    assert info.path is None and info.saelens == GEMMA_SCOPE and info.label == GEMMA_SCOPE
    assert (info.model_name, info.layer, info.d_in, info.d_sae) == ("gemma-2-2b", 19, 2304, 16384)
    assert info.architecture == "jumprelu" and info.hook_name == "blocks.19.hook_resid_post"


def test_release_weights_without_the_hub_are_one_error_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MtsaeError, match=r"cannot load SAELens release .*hub is reachable") as caught:
        load_adapter(release_info(GEMMA_SCOPE))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("spec,match", [
    ("gemma-scope-2b-pt-res-canonical", "takes RELEASE:ID"),
    (":layer_19", "takes RELEASE:ID"),
    ("gemma-scope-2b-pt-res-canonical:layer_19/width_16k/nope", "not found in release"),
    ("gemma-scope-2b-pt-mlp-canonical:layer_19/width_16k/canonical", "only hook_resid_post"),
])
def test_bad_release_specs(spec, match):
    with pytest.raises(MtsaeError, match=match):
        release_info(spec)


def test_cli_saelens_option_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from mtsae.cli import app

    result = CliRunner().invoke(app, ["eval", "--saelens", "no-colon", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.stderr.startswith("error: --saelens takes RELEASE:ID")
    assert len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "at least one checkpoint" in result.stderr


def test_damaged_saelens_weights_are_one_error_line(tmp_path):
    from safetensors.torch import save_file

    _, _, folder = saelens_resave(tmp_path, "relu")
    save_file({"W_enc": torch.zeros(3, 3)}, folder / "sae_weights.safetensors")
    with pytest.raises(MtsaeError, match="SAELens cannot load .*re-save it") as caught:
        load_adapter(folder)
    assert "\n" not in str(caught.value)
    (folder / "sae_weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MtsaeError, match="SAELens cannot load"):
        load_adapter(folder)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(architecture="gated"), "architecture 'gated'"),
    (lambda c: c.update(normalize_activations="expected_average_only_in"), "normalises its input"),
])
def test_saelens_folders_mtsae_cannot_run_are_refused(tmp_path, edit, match):
    _, _, folder = saelens_resave(tmp_path, "relu")
    cfg = json.loads((folder / "cfg.json").read_text())
    edit(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(MtsaeError, match=match):
        read_checkpoint_info(folder)
