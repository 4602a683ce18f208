"""`mtsae cache audit`: the recorded model re-run on stored sequences; it catches what digests cannot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from test_digests import V1_CACHE, forge, set_manifest

from mtsae.cache.audit import TOLERANCES, audit_cache, choose_sequences, worst_row_error
from mtsae.cache.verify import verify_cache, verify_digests
from mtsae.cli import app
from mtsae.errors import MtsaeError

runner = CliRunner()
QUIET = dict(device="cpu", log=lambda _line: None)


@pytest.fixture
def cache_copy(tiny_cache_path, tmp_path) -> Path:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_cache_path, copy)
    return copy


def test_the_embedded_cache_passes_its_audit(tiny_cache_path):
    """Run in CI (the fast suite): the embedded default, re-run on the CPU, matches what harvest stored."""
    result = audit_cache(tiny_cache_path, 3, seed=0, **QUIET)
    assert result.ok and len(result.sequences) == 3 and result.tokens > 0
    assert set(result.worst) == {5, 19} and max(result.worst.values()) <= TOLERANCES["bfloat16"]
    cli = runner.invoke(app, ["cache", "audit", str(tiny_cache_path), "--sequences", "2", "--seed", "1", "--device", "cpu"])
    assert cli.exit_code == 0, cli.output
    assert cli.stdout.startswith(f"ok: {tiny_cache_path} matches its recorded model: 2 sequence(s)")


def test_a_forgery_with_every_checksum_and_digest_recomputed_fails_the_audit(cache_copy):
    """Layer 19 replaced by layer 5's rows, crc32s and sha256s recomputed, fingerprint kept: verify passes it."""
    forge(cache_copy, recompute_digests=True, whole_layer=True)
    assert verify_cache(cache_copy) == [] and verify_digests(cache_copy) == []
    result = audit_cache(cache_copy, 1, seed=0, **QUIET)
    assert not result.ok and result.worst[19] > 10 * TOLERANCES["bfloat16"] and result.worst[5] == 0.0
    cli = runner.invoke(app, ["cache", "audit", str(cache_copy), "--sequences", "1", "--device", "cpu"])
    assert cli.exit_code == 1
    assert cli.stderr.strip().splitlines()[-1].startswith(f"error: cache {cache_copy} fails the audit: its stored "
                                                          "activations are not what the recorded model computes")


def test_another_model_than_the_recorded_one_is_refused(cache_copy):
    from mtsae.cache import read_attrs

    model = read_attrs(cache_copy)["model"]
    set_manifest(cache_copy, model={**model, "weights_sha256": {"model.safetensors": "0" * 64}})
    with pytest.raises(MtsaeError, match="is not the one cache .* records"):
        audit_cache(cache_copy, 1, **QUIET)


def test_a_synthetic_cache_has_no_model_to_audit(tmp_path):
    from mtsae.harvest.synth import SynthConfig, synthesize

    synthesize(SynthConfig(d_model=8, n_features=16, n_sequences=4, seq_len=16), str(tmp_path / "s.zarr"))
    with pytest.raises(MtsaeError, match="records no model to re-run"):
        audit_cache(tmp_path / "s.zarr", 1, **QUIET)


def test_a_cache_without_digests_can_be_audited():
    result = audit_cache(V1_CACHE, 2, seed=0, **QUIET)
    assert result.ok, result.summary()


@given(n=st.integers(1, 500), wanted=st.integers(1, 50), seed=st.integers(0, 2**31 - 1))
def test_sequences_are_distinct_in_range_and_follow_the_seed(n, wanted, seed):
    chosen = choose_sequences(n, wanted, seed)
    assert len(chosen) == min(n, wanted) == len(set(chosen)) and all(0 <= i < n for i in chosen)
    assert chosen == choose_sequences(n, wanted, seed)


def test_row_error_is_relative_and_a_shape_mismatch_fails():
    import torch

    stored = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert worst_row_error(stored * 1.01, stored) == pytest.approx(0.01)
    assert worst_row_error(stored[:1], stored) == float("inf")


@pytest.mark.parametrize("args,message", [
    (["--sequences", "0"], "--sequences must be at least 1, got 0"),
    (["--seed", "-1"], "--seed must be between 0 and 2**63 - 1, got -1"),
    ([], "no mtsae cache at no-such-cache (expected a Zarr group written by `mtsae harvest`)"),
])
def test_bad_audit_arguments_are_one_line(args, message):
    result = runner.invoke(app, ["cache", "audit", "no-such-cache", "--device", "cpu", *args])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: {message}"
