"""Evaluation settings: what ``mtsae eval`` runs, and the SAE-Bench settings of each eval.

Two built-in profiles:

* ``standard`` — SAE-Bench's own settings for Gemma-2-2B (its
  ``custom_saes/run_all_evals_custom_saes.py``): LLM batch 32 in bfloat16, seed
  42; core with 200 reconstruction and 2000 sparsity batches of 16 prompts of
  128 tokens on openwebtext, feature-wise statistics, special tokens excluded;
  sparse probing, unlearning and absorption with their config defaults
  (unlearning on the ``-it`` model, LLM batch 32 // 8 for its 1024-token
  sequences).
* ``tiny`` — the same evals at sizes a 2-core CPU runs in minutes, for the
  built-in models (embedded and world; context 256 tokens). Scoring thresholds are never
  lowered (absorption's ``min_GT_probe_f1`` / ``min_feats_for_eval`` and the
  unlearning question filter stay SAE-Bench's).

``auto`` picks ``tiny`` for the built-in models (embedded, world) and ``standard`` otherwise.
A TOML file overrides any SAE-Bench field per eval (names as in SAE-Bench's
config classes; ``[common]`` for ``llm_batch_size``, ``llm_dtype``,
``random_seed``), and command-line options override the file::

    [common]
    llm_batch_size = 16

    [core]
    n_eval_sparsity_variance_batches = 500

    [sparse_probing]
    dataset_names = ["LabHC/bias_in_bios_class_set1", "fancyzhx/ag_news"]
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsae import env
from mtsae.errors import MtsaeError
from mtsae.values import same_kind
from mtsae.evaluate.names import is_builtin

EVALS = ("core", "sparse_probing", "unlearning", "absorption")
PROFILES = ("auto", "standard", "tiny", "demo")
# The demo's sparse probing: one profession set and one topic set of SAE-Bench's eight datasets. On the
# random-weights embedded model every dataset tests the same plumbing, and each costs the same again.
DEMO_PROBING_DATASETS = ["LabHC/bias_in_bios_class_set1", "fancyzhx/ag_news"]
COMMON_KEYS = ("llm_batch_size", "llm_dtype", "random_seed")
FORGET_CORPUS_ENV = env.WMDP_FORGET_CORPUS.name
SPLICING_EVALS = ("core", "unlearning")
"""Evals that put ``decode(encode(resid))`` back into the model's forward pass: a non-causal SAE there
lets position t see tokens after t (sparse probing and absorption only read the codes)."""

_CORE_FLAGS = {
    "compute_featurewise_density_statistics": True,
    "compute_featurewise_weight_based_metrics": True,
    "exclude_special_tokens_from_reconstruction": True,
    "dataset": "Skylion007/openwebtext",
    "context_size": 128,
}
PROFILE_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "standard": {
        "common": {"llm_batch_size": 32, "llm_dtype": "bfloat16", "random_seed": 42},
        "core": {"n_eval_reconstruction_batches": 200, "n_eval_sparsity_variance_batches": 2000,
                 "eval_batch_size_prompts": 16, **_CORE_FLAGS},
        "sparse_probing": {},
        "unlearning": {},
        "absorption": {},
    },
    "tiny": {
        "common": {"llm_batch_size": 16, "llm_dtype": "float32", "random_seed": 42},
        "core": {"n_eval_reconstruction_batches": 2, "n_eval_sparsity_variance_batches": 4,
                 "eval_batch_size_prompts": 4, **_CORE_FLAGS},
        "sparse_probing": {"probe_train_set_size": 40, "probe_test_set_size": 20, "sae_batch_size": 16},
        "unlearning": {"dataset_size": 16, "seq_len": 128, "n_features_list": [5, 10], "multipliers": [25, 50],
                       "retain_thresholds": [0.01, 0.1]},
        "absorption": {"k_sparse_probe_num_epochs": 10, "k_sparse_probe_batch_size": 512, "max_k_value": 5},
    },
}
# tiny, with sparse probing on two of the eight datasets (`mtsae experiment embedded`, scripts/demo.sh).
PROFILE_SETTINGS["demo"] = copy.deepcopy(PROFILE_SETTINGS["tiny"])
PROFILE_SETTINGS["demo"]["sparse_probing"]["dataset_names"] = DEMO_PROBING_DATASETS
_CORE_KEYS = ("n_eval_reconstruction_batches", "n_eval_sparsity_variance_batches", "eval_batch_size_prompts",
              "compute_featurewise_density_statistics", "compute_featurewise_weight_based_metrics",
              "exclude_special_tokens_from_reconstruction", "dataset", "context_size")
"""Keyword arguments of SAE-Bench's ``core.multiple_evals`` that a user may set."""


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class EvalConfig:
    checkpoints: list[str] = _doc("Checkpoint directories (mtsae's, a training run directory holding final/, or a "
                                  "folder SAELens saved).", default_factory=list)
    saelens: list[str] = _doc("SAELens releases to evaluate beside the checkpoints, as RELEASE:ID (SAELens's "
                              "pretrained_saes.yaml names; loaded from the Hugging Face hub).", default_factory=list)
    out: str = _doc("Output folder: <eval>/ with SAE-Bench's JSON results, summary.json.", default="")
    evals: list[str] = _doc(f"Evals to run, from {', '.join(EVALS)}.", default_factory=lambda: list(EVALS))
    model: str | None = _doc("Model to evaluate on. Default: the model the checkpoints were trained on.", default=None)
    unlearning_model: str | None = _doc(
        "Instruct model for the unlearning eval. Default: the model's -it variant (SAEs trained on the base model).",
        default=None,
    )
    profile: str = _doc("SAE-Bench settings: auto (tiny for the built-in embedded and world models), standard, tiny, or demo (tiny with "
                        "sparse probing on 2 of its 8 datasets).", default="auto")
    config_file: str | None = _doc("TOML file overriding SAE-Bench settings per eval (see docs/evaluation.md).", default=None)
    offline: str | None = _doc(
        "Offline mirror folder (mirror.json: local models and datasets under SAE-Bench's names). "
        "Default: none, or the built-in mirror for the embedded and world models.",
        default=None,
    )
    forget_corpus: str | None = _doc(
        f"WMDP bio forget corpus (gated JSONL) for the unlearning eval. Default: ${FORGET_CORPUS_ENV}, or the mirror's.",
        default=None,
    )
    device: str = _doc("'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...", default="auto")
    llm_dtype: str | None = _doc("Model and SAE dtype for SAE-Bench (float32, bfloat16). Default: the profile's.", default=None)
    llm_batch_size: int | None = _doc("Prompts per model forward at 128 tokens. Default: the profile's.", default=None)
    force: bool = _doc("Recompute results already in --out (default: keep and reuse them).", default=False)
    keep_artifacts: bool = _doc("Keep SAE-Bench's working files under <out>/artifacts/.", default=False)
    allow_non_causal: bool = _doc(
        f"Run {' and '.join(SPLICING_EVALS)} on SAEs whose codes read later tokens (MTSAE without causal padding); "
        "their scores come from a model that sees its future and are flagged as such. Default: refuse them.",
        default=False,
    )

    def validate(self) -> None:
        """Checks that need no disk, model or network."""
        if not self.checkpoints and not self.saelens:
            raise MtsaeError("give at least one checkpoint directory (or --saelens RELEASE:ID) to evaluate")
        if not self.out:
            raise MtsaeError("--out is required: the folder for SAE-Bench's results and summary.json")
        unknown = [e for e in self.evals if e not in EVALS]
        if unknown or not self.evals:
            raise MtsaeError(f"--evals takes a comma-separated subset of {', '.join(EVALS)}, got {self.evals}")
        if self.profile not in PROFILES:
            raise MtsaeError(f"--profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.llm_batch_size is not None and self.llm_batch_size < 1:
            raise MtsaeError(f"--llm-batch-size must be at least 1, got {self.llm_batch_size}")
        if self.llm_dtype is not None and self.llm_dtype not in ("float32", "bfloat16", "float16"):
            raise MtsaeError(f"--llm-dtype must be float32, bfloat16 or float16, got {self.llm_dtype!r}")


def resolve_profile(profile: str, model: str) -> str:
    if profile != "auto":
        return profile
    return "tiny" if is_builtin(model) else "standard"


def resolve_settings(cfg: EvalConfig, profile: str, device: str = "cuda") -> dict[str, dict[str, Any]]:
    """Per-eval SAE-Bench keyword arguments: profile < TOML file < command line."""
    import torch

    from mtsae.devices import compute_dtype

    settings = copy.deepcopy(PROFILE_SETTINGS[profile])
    # The profile's dtype is a speed choice: on a CPU without native bfloat16, float32 is the fast one.
    settings["common"]["llm_dtype"] = compute_dtype(settings["common"]["llm_dtype"], torch.device(device))
    for section, values in _read_toml(cfg.config_file).items():
        settings[section].update(values)
    cli = {"llm_batch_size": cfg.llm_batch_size, "llm_dtype": cfg.llm_dtype}
    settings["common"].update({k: v for k, v in cli.items() if v is not None})
    return {name: _eval_kwargs(name, settings) for name in EVALS}


def _eval_kwargs(name: str, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    common = settings["common"]
    own = dict(settings[name])
    if name == "core":  # core's only model settings are the dtype and its own prompt batch size
        return {"dtype": common["llm_dtype"], **own}
    merged = {**common, **own}
    if name == "unlearning" and "llm_batch_size" not in own:
        # SAE-Bench's rule: batch sizes are for 128-token prompts (it uses 32 // 8 at seq_len 1024).
        seq_len = own.get("seq_len", _config_class("unlearning")().seq_len)
        merged["llm_batch_size"] = max(1, common["llm_batch_size"] * 128 // seq_len)
    return merged


def _read_toml(path: str | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MtsaeError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise MtsaeError(f"cannot read config file {path} ({exc.strerror}); check the --config path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MtsaeError(f"config file {path} is not valid TOML: {exc}; fix the syntax") from None
    for section, values in data.items():
        if section not in ("common", *EVALS) or not isinstance(values, dict):
            raise MtsaeError(f"config file {path}: unknown table [{section}]; use [common] or one of {', '.join(EVALS)}")
        allowed = _allowed_keys(section)
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise MtsaeError(f"config file {path}: [{section}] has unknown key(s) {unknown}; valid: {', '.join(allowed)}")
        for key, value in values.items():
            _check_type(path, section, key, value)
    return data


def _check_type(path: str, section: str, key: str, value: Any) -> None:
    """A value of the wrong kind (a string for a count…) would crash deep inside SAE-Bench; refuse it here."""
    expected = _default_value(section, key)
    if expected is None:
        return
    if not same_kind(value, expected):
        raise MtsaeError(f"config file {path}: [{section}] {key} = {value!r} should be a {type(expected).__name__} "
                         f"like {expected!r}; fix the value")


def _default_value(section: str, key: str) -> Any:
    if section == "common":
        return PROFILE_SETTINGS["standard"]["common"][key]
    if section == "core":
        return {**PROFILE_SETTINGS["tiny"]["core"], **PROFILE_SETTINGS["standard"]["core"]}.get(key)
    return getattr(_config_class(section)(), key, None)  # SAE-Bench's own default (pydantic dataclasses)


def _allowed_keys(section: str) -> tuple[str, ...]:
    if section == "common":
        return COMMON_KEYS
    if section == "core":
        return _CORE_KEYS
    return tuple(f.name for f in dataclasses.fields(_config_class(section)) if f.name != "model_name")


def _config_class(name: str):
    """SAE-Bench's config dataclass of an eval (imported lazily: sae_bench imports take seconds)."""
    if name == "sparse_probing":
        from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig as cls
    elif name == "unlearning":
        from sae_bench.evals.unlearning.eval_config import UnlearningEvalConfig as cls
    elif name == "absorption":
        from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig as cls
    else:
        raise KeyError(name)
    return cls


def context_lengths(settings: dict[str, dict[str, Any]], evals: list[str]) -> dict[str, int]:
    """The longest token sequence each selected eval feeds the model (checked against its positions)."""
    lengths = {
        "core": settings["core"].get("context_size", 128),
        "sparse_probing": settings["sparse_probing"].get("context_length", 128),
        "unlearning": settings["unlearning"].get("seq_len", 1024),
    }
    return {name: n for name, n in lengths.items() if name in evals}
