"""Shared fixtures. Nothing in the test suite may reach the Hugging Face hub."""

from __future__ import annotations

import os
import shutil
import tempfile

# Before anything imports transformers/datasets: offline, and caches in a throw-away place.
_SESSION_HOME = tempfile.mkdtemp(prefix="mtsae-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = os.path.join(_SESSION_HOME, "hf")
os.environ["MTSAE_HOME"] = os.path.join(_SESSION_HOME, "mtsae")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors: one intra-op thread is as fast and immune to the 10x slow-downs that
# OpenMP spin-waiting suffers when another process shares the two cores.
torch.set_num_threads(1)

from mtsae.harvest.config import HarvestConfig  # noqa: E402

# A harvest small enough for unit tests, with chunks small enough that sequences straddle them.
TINY_HARVEST = dict(max_tokens=3000, context_len=64, batch_size=4, chunk_tokens=256)


def tiny_arch_config(name: str) -> dict:
    """The one table of tiny architecture configs: what each class declares in ``tiny_config`` (a copy)."""
    from mtsae.train.registry import get_architecture

    return dict(get_architecture(name).tiny_config)


def tiny_harvest(out, **overrides):
    """Harvest the embedded default into ``out`` with tiny settings; returns the HarvestOutcome."""
    from mtsae.harvest.run import harvest

    cfg = HarvestConfig(**{**TINY_HARVEST, **overrides})
    return harvest(cfg, str(out), log=lambda _line: None, progress=False)


def train_a_few_steps(sae, batch_shape: tuple[int, ...], steps: int, lr: float = 1e-2):
    """Real optimiser steps on random input, so thresholds, BN statistics and dead counters leave their init."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        out = sae.loss(torch.randn(*batch_shape))
        optimizer.zero_grad()
        out.loss.backward()
        sae.remove_parallel_gradient_()
        optimizer.step()
        sae.constrain_parameters_()
    return sae


@pytest.fixture(scope="session")
def tiny_cache_path(tmp_path_factory):
    """A complete cache of the embedded default (layers 5 and 19, bf16, context 64, 3000 tokens)."""
    out = tmp_path_factory.mktemp("caches") / "tiny.zarr"
    tiny_harvest(out)
    return out


@pytest.fixture
def cache_copy(tiny_cache_path, tmp_path):
    """A private copy of the tiny cache, for tests that damage or edit it."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_cache_path, copy)
    return copy
