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

Each eval's settings per profile are in its spec (:mod:`mtsae.evaluate.sae_bench_evals`), the
``[common]`` ones here. ``auto`` picks ``tiny`` for the built-in models (embedded, world) and ``standard`` otherwise.
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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsae import env
from mtsae.errors import MtsaeError
from mtsae.values import same_kind
from mtsae.evaluate import registry
from mtsae.evaluate.names import is_builtin

PROFILES = ("auto", "standard", "tiny", "demo")
COMMON_KEYS = ("llm_batch_size", "llm_dtype", "random_seed")
COMMON_SETTINGS: dict[str, dict[str, Any]] = {
    "standard": {"llm_batch_size": 32, "llm_dtype": "bfloat16", "random_seed": 42},
    "tiny": {"llm_batch_size": 16, "llm_dtype": "float32", "random_seed": 42},
}
"""The ``[common]`` settings of each profile; each eval's own are in its spec (:mod:`mtsae.evaluate.registry`)."""
FORGET_CORPUS_ENV = env.WMDP_FORGET_CORPUS.name


def eval_names() -> tuple[str, ...]:
    """Every registered eval (``--evals`` choices, TOML tables)."""
    return registry.names()


def splicing_evals() -> tuple[str, ...]:
    """Evals that put ``decode(encode(resid))`` back into the model's forward pass: a non-causal SAE there
    lets position t see tokens after t (the others only read the codes)."""
    return tuple(spec.name for spec in registry.specs() if spec.splices)


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class EvalConfig:
    checkpoints: list[str] = _doc("Checkpoint directories (mtsae's, a training run directory holding final/, or a "
                                  "folder SAELens saved).", default_factory=list)
    saelens: list[str] = _doc("SAELens releases to evaluate beside the checkpoints, as RELEASE:ID (SAELens's "
                              "pretrained_saes.yaml names; loaded from the Hugging Face hub).", default_factory=list)
    out: str = _doc("Output folder: <eval>/ with SAE-Bench's JSON results, summary.json.", default="")
    evals: list[str] = _doc(f"Evals to run, from {', '.join(eval_names())}.", default_factory=lambda: list(eval_names()))
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
        f"Run {' and '.join(splicing_evals())} on SAEs whose codes read later tokens (MTSAE without causal padding); "
        "their scores come from a model that sees its future and are flagged as such. Default: refuse them.",
        default=False,
    )

    def validate(self) -> None:
        """Checks that need no disk, model or network."""
        if not self.checkpoints and not self.saelens:
            raise MtsaeError("give at least one checkpoint directory (or --saelens RELEASE:ID) to evaluate")
        if not self.out:
            raise MtsaeError("--out is required: the folder for SAE-Bench's results and summary.json")
        unknown = [e for e in self.evals if e not in eval_names()]
        if unknown or not self.evals:
            raise MtsaeError(f"--evals takes a comma-separated subset of {', '.join(eval_names())}, got {self.evals}")
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

    common = copy.deepcopy(COMMON_SETTINGS[registry.PROFILE_FALLBACK.get(profile, profile)])
    # The profile's dtype is a speed choice: on a CPU without native bfloat16, float32 is the fast one.
    common["llm_dtype"] = compute_dtype(common["llm_dtype"], torch.device(device))
    own = {spec.name: copy.deepcopy(spec.profile_settings(profile)) for spec in registry.specs()}
    for section, values in _read_toml(cfg.config_file).items():
        (common if section == "common" else own[section]).update(values)
    cli = {"llm_batch_size": cfg.llm_batch_size, "llm_dtype": cfg.llm_dtype}
    common.update({k: v for k, v in cli.items() if v is not None})
    return {spec.name: spec.kwargs(common, own[spec.name]) for spec in registry.specs()}


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
    names = eval_names()
    for section, values in data.items():
        if section not in ("common", *names) or not isinstance(values, dict):
            raise MtsaeError(f"config file {path}: unknown table [{section}]; use [common] or one of {', '.join(names)}")
        allowed = COMMON_KEYS if section == "common" else registry.get(section).settable_keys()
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise MtsaeError(f"config file {path}: [{section}] has unknown key(s) {unknown}; valid: {', '.join(allowed)}")
        for key, value in values.items():
            _check_type(path, section, key, value)
    return data


def _check_type(path: str, section: str, key: str, value: Any) -> None:
    """A value of the wrong kind (a string for a count…) would crash deep inside SAE-Bench; refuse it here."""
    if section == "common":
        expected = COMMON_SETTINGS["standard"][key]
    else:
        expected = registry.get(section).default_value(key)
    if expected is None:
        return
    if not same_kind(value, expected):
        raise MtsaeError(f"config file {path}: [{section}] {key} = {value!r} should be a {type(expected).__name__} "
                         f"like {expected!r}; fix the value")


def context_lengths(settings: dict[str, dict[str, Any]], evals: list[str]) -> dict[str, int]:
    """The longest token sequence each selected eval feeds the model (checked against its positions)."""
    return {spec.name: settings[spec.name].get(*spec.context_setting)
            for spec in registry.specs() if spec.name in evals and spec.context_setting is not None}
