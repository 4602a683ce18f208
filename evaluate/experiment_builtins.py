"""The built-in experiments (`mtsae experiment embedded | embedded-full | world | synthetic | temporal-synth`): data only.

Their TOML form is documented in :mod:`mtsae.evaluate.experiment`; ``evals`` given as a function are
resolved from the eval registry when the experiment is loaded.
"""

from __future__ import annotations

from mtsae.evaluate import registry

# Matched width, learning rate and tokens per step (the trainer's 4096 // window windows) for every run.
_MATCHED = {"d_sae": 512, "lr": 3e-3}
_SEED_RUNS = [
    {"name": "baseline_sae", "preset": "run0"},
    {"name": "basic_mtsae", "preset": "run1"},
    {"name": "optimized_mtsae", "preset": "run2"},
    {"name": "expanded_context_mtsae", "preset": "run3"},
]
_BASELINES = [
    {"name": "topk", "arch": "topk", "arch_config": {"k": 32}},
    {"name": "batchtopk", "arch": "batchtopk", "arch_config": {"k": 32}},
    {"name": "jumprelu", "arch": "jumprelu"},
]
# Causal runs for the world: the default temporal SAE (causal bank, per-group TopK) and each per-token twin.
_WORLD_RUNS = [{"name": arch, "arch": arch} for arch in ("mtsae", "topk", "batchtopk", "relu", "jumprelu")]


def _demo_evals() -> list[str]:
    return [spec.name for spec in registry.specs() if spec.in_demo]


def _all_evals() -> list[str]:
    return list(registry.names())


BUILTIN = {
    # The demo (scripts/demo.sh): the evals whose spec is in_demo (absorption is not: the random-weights model
    # represents no first letters) and sparse probing on 2 of 8 datasets (the "demo" eval profile).
    # embedded-full adds both back (docs/results.md). "evals" are resolved when the experiment is loaded.
    "embedded": {
        "out": "experiments/embedded",
        "harvest": {},
        "evals": _demo_evals,
        # The seed's run1-run3 keep their non-causal padding: evaluated anyway, and flagged in the report.
        "eval_options": {"profile": "demo", "allow_non_causal": True},
        "defaults": {**_MATCHED, "train_tokens": 1_200_000},
        "runs": _SEED_RUNS + _BASELINES,
    },
    "embedded-full": {
        "out": "experiments/embedded-full",
        "harvest": {},
        "evals": _all_evals,
        # The seed's run1-run3 keep their non-causal padding: evaluated anyway, and flagged in the report.
        "eval_options": {"allow_non_causal": True},
        "defaults": {**_MATCHED, "train_tokens": 1_200_000},
        "runs": _SEED_RUNS + _BASELINES,
    },
    # The trained world LM (docs/world.md): every eval scorable. Causal runs only, since unlearning splices
    # the SAE into the model: the recommended temporal SAE and its per-token twins, at matched L0, 3 seeds.
    "world": {
        "out": "experiments/world",
        "harvest": {"model": "world", "dataset": "world"},
        "evals": _all_evals,
        "defaults": {**_MATCHED, "train_tokens": 1_200_000},
        "match_l0": [16],
        "unlearn": True,
        "runs": [{**run, "name": f"{run['name']}-s{seed}", "seed": seed}
                 for seed in (0, 1, 2) for run in _WORLD_RUNS],
    },
    "synthetic": {
        "out": "experiments/synthetic",
        "synth": {},
        "evals": [],
        "defaults": {**_MATCHED, "layer": 0, "train_tokens": 2_000_000},
        # The truth has L0 ~ 5 (256 features x p 0.02); 16 shows the trend at a looser budget.
        "match_l0": [5, 16],
        "runs": _SEED_RUNS + _BASELINES,
    },
    # Temporal vs per-token SAEs trained in memory on two synthetic regimes (strong, weak-slow), at matched
    # L0 5, 3 seeds, verdict per regime refused inside the seed spread: evaluate/temporal_synth.py, at the
    # budget docs/results.md measured (its Budget defaults).
    "temporal-synth": {
        "out": "experiments/temporal-synth",
        "temporal_synth": {},
    },
}
