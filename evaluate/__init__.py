"""Evaluate mtsae checkpoints with SAE-Bench (see docs/evaluation.md).

- ``run``             ``evaluate(EvalConfig) -> EvalSummary``: SAE-Bench's core, sparse probing,
                      unlearning and absorption evals, results + ``summary.json``
- ``adapter``         ``MtsaeBenchSAE`` / ``load_adapter``: a checkpoint as a SAE-Bench ``BaseSAE``
- ``config``          ``EvalConfig``, the profiles and their ``[common]`` settings
- ``registry``        one ``EvalSpec`` per eval (``sae_bench_evals``: SAE-Bench's four), read by every place
- ``offline``         ``OfflineMirror`` / ``load_mirror``: local models and datasets under hub names
- ``embedded_mirror`` ``ensure_embedded_mirror``: that mirror for the embedded tiny model
- ``models``          shapes, ``load_hooked_transformer`` from a local Gemma-2 directory (``names``: model names)
- ``patches``         every SAE-Bench patch point, as context managers
- ``evals``, ``checkpoints``, ``summary``, ``synthetic``, ``rng``: one SAE-Bench call, checkpoint metadata,
  summary.json, mirror text, seeding that gives the caller's generators back

(``analysis``, ``ground_truth`` and ``report`` (its figures in ``figures``) are separate tools; see their docstrings.)

Nothing is imported here: ``sae_bench`` takes seconds to import.
"""
