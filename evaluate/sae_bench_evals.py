"""SAE-Bench's core, sparse probing, unlearning and absorption evals: one registry spec each.

Each runner calls SAE-Bench's own ``run_eval`` (``multiple_evals`` for core)
with SAE-Bench's config class, inside the patches it needs
(:mod:`mtsae.evaluate.patches`). Profiles (see :mod:`mtsae.evaluate.config`):
``standard`` is SAE-Bench's own settings for Gemma-2-2B (its
``custom_saes/run_all_evals_custom_saes.py``); ``tiny`` the same evals at sizes
a 2-core CPU runs in minutes, scoring thresholds never lowered; ``demo`` is
tiny with sparse probing on two of its eight datasets.

Imports of sae_bench, torch and the patches are inside the runners: the CLI
reads these specs at start-up.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mtsae.evaluate.registry import EvalSpec, ReportColumn, Settings, load_class, register

if TYPE_CHECKING:
    from mtsae.evaluate.adapter import MtsaeBenchSAE
    from mtsae.evaluate.evals import Job

CHANCE_ACCURACY = 0.5  # SAE-Bench's sparse-probing tasks are binary
CHANCE_MARGIN = 0.05
# The demo's sparse probing: one profession set and one topic set of SAE-Bench's eight datasets. On the
# random-weights embedded model every dataset tests the same plumbing, and each costs the same again.
DEMO_PROBING_DATASETS = ["LabHC/bias_in_bios_class_set1", "fancyzhx/ag_news"]
_UNLEARNING_CONFIG = "sae_bench.evals.unlearning.eval_config:UnlearningEvalConfig"


def _selected(job: Job) -> list[tuple[str, MtsaeBenchSAE]]:
    return [(t.release, t.sae) for t in job.targets]


# --------------------------------------------------------------------------- core


def _run_core(job: Job) -> None:
    import sae_bench.evals.core.main as core

    from mtsae.evaluate.patches import captured_errors

    with captured_errors(core.__name__) as errors:  # core logs a failing SAE and moves on
        core.multiple_evals(selected_saes=_selected(job), output_folder=str(job.out_dir), device=job.device,
                            force_rerun=True, verbose=True, **job.settings)
    job.errors.extend(errors)


def _core_kwargs(common: Settings, own: Settings) -> Settings:
    return {"dtype": common["llm_dtype"], **own}  # core's only model settings: the dtype, its own prompt batch


def _core_guardrail(metrics: dict[str, float]) -> str | None:
    # SAE-Bench's core eval feeds 128-token contexts; an SAE can look fine on its own windows and fail there.
    ev = metrics.get("explained_variance")
    return f"SAE-Bench core explained variance {ev:.3f} <= 0" if ev is not None and not ev > 0 else None


_CORE_FLAGS = {
    "compute_featurewise_density_statistics": True,
    "compute_featurewise_weight_based_metrics": True,
    "exclude_special_tokens_from_reconstruction": True,
    "dataset": "Skylion007/openwebtext",
    "context_size": 128,
}
register(EvalSpec(
    name="core",
    run=_run_core,
    headline=("reconstruction_quality.explained_variance", "reconstruction_quality.mse",
              "reconstruction_quality.cossim", "sparsity.l0", "model_behavior_preservation.kl_div_score",
              "model_performance_preservation.ce_loss_score", "shrinkage.l2_ratio"),
    settings={
        "standard": {"n_eval_reconstruction_batches": 200, "n_eval_sparsity_variance_batches": 2000,
                     "eval_batch_size_prompts": 16, **_CORE_FLAGS},
        "tiny": {"n_eval_reconstruction_batches": 2, "n_eval_sparsity_variance_batches": 4,
                 "eval_batch_size_prompts": 4, **_CORE_FLAGS},
    },
    kwargs=_core_kwargs,
    context_setting=("context_size", 128),
    splices=True,
    datasets=("Skylion007/openwebtext",),
    model_modules=("sae_bench.evals.core.main",),
    dataset_modules=("sae_lens.training.activations_store",),
    kind="reconstruction",
    guardrail=_core_guardrail,
))


# --------------------------------------------------------------------------- sparse probing


def _run_sparse_probing(job: Job) -> None:
    import sae_bench.evals.sparse_probing.main as sparse_probing

    from mtsae.evaluate.patches import probe_shape_scopes

    config = sparse_probing.SparseProbingEvalConfig(model_name=job.model, **job.settings)
    # Activations saved once in the working directory and reused for every SAE of the group.
    with probe_shape_scopes():
        sparse_probing.run_eval(config, _selected(job), job.device, str(job.out_dir), force_rerun=True,
                                clean_up_activations=False, save_activations=True,
                                artifacts_path=str(job.workdir / "artifacts"))


def _probing_rows(settings: Settings) -> int:
    from mtsae.evaluate.embedded_mirror import rows_needed

    return rows_needed(settings.get("probe_train_set_size", 4000), settings.get("probe_test_set_size", 1000))


def _probing_guardrail(metrics: dict[str, float]) -> str | None:
    acc = metrics.get("sae_test_accuracy")
    at_chance = acc is not None and acc <= CHANCE_ACCURACY + CHANCE_MARGIN
    return f"sparse probing at chance (SAE accuracy {acc:.3f})" if at_chance else None


_TINY_PROBING = {"probe_train_set_size": 40, "probe_test_set_size": 20, "sae_batch_size": 16}
register(EvalSpec(
    name="sparse_probing",
    run=_run_sparse_probing,
    headline=("llm.llm_test_accuracy", "llm.llm_top_1_test_accuracy", "sae.sae_test_accuracy",
              "sae.sae_top_1_test_accuracy", "sae.sae_top_2_test_accuracy", "sae.sae_top_5_test_accuracy"),
    settings={"standard": {}, "tiny": _TINY_PROBING,
              "demo": {**_TINY_PROBING, "dataset_names": DEMO_PROBING_DATASETS}},
    config_class="sae_bench.evals.sparse_probing.eval_config:SparseProbingEvalConfig",
    context_setting=("context_length", 128),
    datasets=("LabHC/bias_in_bios", "canrager/amazon_reviews_mcauley_1and5", "codeparrot/github-code",
              "fancyzhx/ag_news", "Helsinki-NLP/europarl"),
    model_modules=("sae_bench.evals.sparse_probing.main",),
    dataset_modules=("sae_bench.sae_bench_utils.dataset_utils",),
    mirror_rows=_probing_rows,
    columns=(ReportColumn("probe LLM", "llm_test_accuracy", status_when_missing=False),
             ReportColumn("probe SAE", "sae_test_accuracy", status_when_missing=False)),
    column_note="probe: SAE-Bench sparse probing test accuracy.",
    guardrail=_probing_guardrail,
))


# --------------------------------------------------------------------------- unlearning


def _run_unlearning(job: Job) -> None:
    import sae_bench.evals.unlearning.main as unlearning

    from mtsae.evaluate.patches import unlearning_scorability

    config = unlearning.UnlearningEvalConfig(model_name=job.model, **job.settings)
    with unlearning_scorability(config.target_metric):
        unlearning.run_eval(config, _selected(job), job.device, str(job.out_dir), force_rerun=True,
                            artifacts_path=str(job.workdir / "artifacts"))


def _unlearning_kwargs(common: Settings, own: Settings) -> Settings:
    merged = {**common, **own}
    if "llm_batch_size" not in own:
        # SAE-Bench's rule: batch sizes are for 128-token prompts (it uses 32 // 8 at seq_len 1024).
        seq_len = own.get("seq_len", load_class(_UNLEARNING_CONFIG)().seq_len)
        merged["llm_batch_size"] = max(1, common["llm_batch_size"] * 128 // seq_len)
    return merged


register(EvalSpec(
    name="unlearning",
    run=_run_unlearning,
    headline=("unlearning.unlearning_score",),
    settings={"standard": {}, "tiny": {"dataset_size": 16, "seq_len": 128, "n_features_list": [5, 10],
                                       "multipliers": [25, 50], "retain_thresholds": [0.01, 0.1]}},
    config_class=_UNLEARNING_CONFIG,
    kwargs=_unlearning_kwargs,
    context_setting=("seq_len", 1024),
    splices=True,
    instruct_model=True,
    forget_corpus=True,
    datasets=("cais/wmdp", "cais/mmlu", "wikitext"),
    model_modules=("sae_bench.evals.unlearning.main",),
    dataset_modules=("sae_bench.evals.unlearning.utils.metrics", "sae_bench.evals.unlearning.utils.feature_activation"),
))


# --------------------------------------------------------------------------- absorption


def _run_absorption(job: Job) -> None:
    import sae_bench.evals.absorption.main as absorption

    from mtsae.evaluate.patches import absorption_artifacts

    config = absorption.AbsorptionEvalConfig(model_name=job.model, **job.settings)
    with absorption_artifacts(job.workdir / "artifacts" / "absorption"):
        absorption.run_eval(config, _selected(job), job.device, str(job.out_dir), force_rerun=True)


def _absorption_not_scorable(job: Job) -> str | None:
    """SAE-Bench's absorption ``break``s without output when too few first letters are probe-detectable."""
    from mtsae.evaluate.evals import SAE_ID, result_path

    if all(result_path(job.out_dir, t.release).is_file() for t in job.targets):
        return None
    threshold = job.settings.get("min_GT_probe_f1", 0.6)
    needed = job.settings.get("min_feats_for_eval", 20)
    for target in job.targets:
        probing = job.workdir / "artifacts" / "absorption" / f"{target.release}_{SAE_ID}_k_sparse_probing.json"
        if probing.is_file():
            rows: list[dict[str, Any]] = json.loads(probing.read_text())
            found = sum(1 for row in rows if row.get("f1_probe", 0) > threshold)
            if found < needed:
                return (
                    f"only {found} of 26 first letters have a ground-truth probe F1 above {threshold} on this model's "
                    f"layer {target.info.layer} (SAE-Bench needs min_feats_for_eval={needed}); the model does not "
                    "represent first letters linearly, so absorption is undefined"
                )
    return None


register(EvalSpec(
    name="absorption",
    run=_run_absorption,
    headline=("mean.mean_absorption_fraction_score", "mean.mean_full_absorption_score",
              "mean.mean_num_split_features"),
    settings={"standard": {}, "tiny": {"k_sparse_probe_num_epochs": 10, "k_sparse_probe_batch_size": 512,
                                       "max_k_value": 5}},
    config_class="sae_bench.evals.absorption.eval_config:AbsorptionEvalConfig",
    # SAE-Bench concludes "not scorable" only after training its probes, and neither the random-weights model
    # nor the world LM represents first letters linearly (docs/world.md): the demo leaves absorption out
    # (embedded-full and world keep it).
    in_demo=False,
    model_modules=("sae_bench.evals.absorption.main",),
    not_scorable=_absorption_not_scorable,
))
