"""Every place where mtsae changes how SAE-Bench runs, each a context manager.

SAE-Bench's evals are run through their own ``run_eval`` / ``multiple_evals``;
these patches only replace *names inside SAE-Bench modules* for the duration
of a ``with`` block (``unittest.mock.patch.object``, undone on exit) and set
the working directory. :data:`PATCH_POINTS` lists them (the tests check that
each still exists in the installed SAE-Bench); docs/evaluation.md explains them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Iterator
from unittest import mock

from mtsae.errors import MtsaeError
from mtsae.evaluate import registry
from mtsae.evaluate.models import load_hooked_transformer
from mtsae.evaluate.offline import OfflineMirror

FORGET_CORPUS_RELPATH = Path("sae_bench/evals/unlearning/data/bio-forget-corpus.jsonl")
"""Where SAE-Bench's unlearning eval opens the WMDP bio forget corpus, relative to the working directory."""


def _model_modules() -> tuple[str, ...]:
    """Where the registered evals' SAE-Bench code builds its model (``HookedTransformer``)."""
    return tuple(dict.fromkeys(m for spec in registry.specs() for m in spec.model_modules))


def _dataset_modules() -> tuple[str, ...]:
    """Where their SAE-Bench (or SAELens) code loads its datasets (``load_dataset``)."""
    return tuple(dict.fromkeys(m for spec in registry.specs() for m in spec.dataset_modules))


_PROBE_TRAINING = "sae_bench.evals.sparse_probing.probe_training"
_NESTED_SHAPE_CHECKED = ("train_sklearn_probe", "test_sklearn_probe")

PATCH_POINTS: tuple[tuple[str, str, str], ...] = (
    *((m, "HookedTransformer", "offline: the model is built from a local directory") for m in _model_modules()),
    *((m, "load_dataset", "offline: hub dataset names resolve to mirror files") for m in _dataset_modules()),
    ("sae_bench.evals.absorption.main", "run_k_sparse_probing_experiment",
     "artifacts go to the run's working directory, not inside the installed sae_bench package"),
    ("sae_bench.evals.absorption.main", "run_feature_absortion_experiment", "as above"),
    ("sae_bench.evals.unlearning.utils.metrics", "save_target_question_ids",
     "stop with 'not scorable' when the model answers no question of a dataset under all orderings"),
    *((_PROBE_TRAINING, name, "own jaxtyping dimension scope (else every call fails its shape check)")
      for name in _NESTED_SHAPE_CHECKED),
)


class NotScorable(Exception):
    """SAE-Bench cannot produce a meaningful score for this model/SAE; ``str(exc)`` says why."""


def _module(name: str):
    import importlib

    return importlib.import_module(name)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[Path]:
    """Run inside ``path``: SAE-Bench writes ``artifacts/`` and reads ``./sae_bench/...`` relative to it.

    ``GIT_CEILING_DIRECTORIES`` keeps SAE-Bench's ``git rev-parse HEAD`` (its
    ``sae_bench_commit_hash``) from reporting the commit of whatever repository
    happens to contain the working directory; it then records "Unknown".
    """
    previous, ceiling = Path.cwd(), os.environ.get("GIT_CEILING_DIRECTORIES")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["GIT_CEILING_DIRECTORIES"] = str(path.resolve().parent)
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)
        if ceiling is None:
            os.environ.pop("GIT_CEILING_DIRECTORIES", None)
        else:
            os.environ["GIT_CEILING_DIRECTORIES"] = ceiling


def link_forget_corpus(workdir: Path, corpus: Path) -> Path:
    """Make ``<workdir>/sae_bench/evals/unlearning/data/bio-forget-corpus.jsonl`` point at ``corpus``."""
    if not corpus.is_file():
        raise MtsaeError(f"WMDP bio forget corpus {corpus} does not exist; pass the downloaded JSONL file")
    link = workdir / FORGET_CORPUS_RELPATH
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(corpus.resolve())
    return link


class _LocalHookedTransformer:
    """Stands in for the name ``HookedTransformer`` inside one SAE-Bench module (offline)."""

    def __init__(self, mirror: OfflineMirror):
        self.mirror = mirror

    def from_pretrained_no_processing(self, model_name: str, device=None, dtype="float32", **_kwargs):
        local = self.mirror.model(model_name)
        return load_hooked_transformer(local.path, local.tl_name, device, dtype)


@contextlib.contextmanager
def offline(mirror: OfflineMirror) -> Iterator[None]:
    """SAE-Bench's model and dataset loads resolve to the mirror; nothing reaches the hub."""
    with contextlib.ExitStack() as stack:
        shim = _LocalHookedTransformer(mirror)
        for name in _model_modules():
            stack.enter_context(mock.patch.object(_module(name), "HookedTransformer", shim))
        for name in _dataset_modules():
            stack.enter_context(mock.patch.object(_module(name), "load_dataset", mirror.load_dataset))
        yield


@contextlib.contextmanager
def absorption_artifacts(root: Path) -> Iterator[None]:
    """Absorption's probes and parquet results under ``root``.

    Its experiment functions default to ``<site-packages>/sae_bench/artifacts/absorption``
    (default arguments, bound at import) and reuse whatever they find there,
    keyed only by model name, layer and SAE name: a later run would silently
    read an earlier run's probes and results.
    """
    import sae_bench.evals.absorption.main as absorption
    from sae_bench.evals.absorption.feature_absorption import FEATURE_ABSORPTION_EXPERIMENT_NAME
    from sae_bench.evals.absorption.k_sparse_probing import SPARSE_PROBING_EXPERIMENT_NAME

    sparse_dir, probes_dir = root / SPARSE_PROBING_EXPERIMENT_NAME, root / "probes"
    k_sparse = functools.partial(absorption.run_k_sparse_probing_experiment,
                                 experiment_dir=sparse_dir, probes_dir=probes_dir)
    feature = functools.partial(absorption.run_feature_absortion_experiment,
                                experiment_dir=root / FEATURE_ABSORPTION_EXPERIMENT_NAME,
                                sparse_probing_experiment_dir=sparse_dir, probes_dir=probes_dir)
    with mock.patch.object(absorption, "run_k_sparse_probing_experiment", k_sparse), \
            mock.patch.object(absorption, "run_feature_absortion_experiment", feature):
        yield


@contextlib.contextmanager
def unlearning_scorability(target_metric: str) -> Iterator[None]:
    """Raise :class:`NotScorable` as soon as a dataset has no target questions.

    SAE-Bench keeps only questions the model answers correctly under all 24
    orderings of the choices; with none, its next step divides by zero
    (``np.minimum(0, batch) → n_batches = 0 // 0``) and the score would be
    undefined. The check reads the question-id file SAE-Bench just wrote.
    """
    import sae_bench.evals.unlearning.utils.metrics as metrics

    original = metrics.save_target_question_ids

    def checked(model, mcq_batch_size, artifacts_folder, dataset_name, *args, **kwargs):
        original(model, mcq_batch_size, artifacts_folder, dataset_name, *args, **kwargs)
        full_name = dataset_name if dataset_name == "wmdp-bio" else f"mmlu-{dataset_name.replace('_', '-')}"
        ids_file = Path(artifacts_folder, "data/question_ids/all", f"{full_name}_{target_metric}.csv")
        if not ids_file.is_file() or not ids_file.read_text().split():
            raise NotScorable(
                f"the model answers no {dataset_name} question correctly under all 24 orderings of its choices "
                f"(SAE-Bench's '{target_metric}' questions), so there is nothing to unlearn or retain; "
                "a capable instruct model (e.g. gemma-2-2b-it) is needed"
            )

    with mock.patch.object(metrics, "save_target_question_ids", checked):
        yield


@contextlib.contextmanager
def probe_shape_scopes() -> Iterator[None]:
    """Give SAE-Bench's plain-``@beartype`` probe functions their own jaxtyping dimension scope.

    ``train_probe_on_activations`` is ``@jaxtyped`` and annotates its dict
    arguments ``Float[Tensor, "train_dataset_size d_model"]``; beartype (0.23
    here) checks one dict value, binding ``train_dataset_size`` to the size of
    one class. ``train_sklearn_probe``, called inside with the positive and
    negative examples of a class (twice that size) under the same name, then
    fails with ``BeartypeCallHintParamViolation`` for every input: sparse
    probing cannot finish. Wrapping the nested functions in
    ``jaxtyped(typechecker=None)`` (jaxtyping's documented way to open a new
    scope) keeps all their shape checks, each within its own call.
    """
    from jaxtyping import jaxtyped

    module = _module(_PROBE_TRAINING)
    with contextlib.ExitStack() as stack:
        for name in _NESTED_SHAPE_CHECKED:
            scoped = jaxtyped(typechecker=None)(getattr(module, name))
            stack.enter_context(mock.patch.object(module, name, scoped))
        yield


@contextlib.contextmanager
def captured_errors(logger_name: str) -> Iterator[list[str]]:
    """Collect ERROR records of a logger (SAE-Bench's core eval logs and skips an SAE that fails)."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.ERROR)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
