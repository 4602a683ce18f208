"""SAE training components: architectures, temporal mixing, presets, checkpoints.

Modules (see docs/architectures.md):

- ``registry``   ``register(name)``, ``get_architecture(name)``, ``architecture_names()``, ``create_sae``
- ``base``       ``SparseAutoencoder``, ``SAEConfig``, ``LossOutput``, ``Encoded``, ``Term``, ``linear_warmup``
- ``archs``      one module per architecture: relu, topk, batchtopk, jumprelu, mtsae
- ``temporal``   multi-scale temporal mixing used by MTSAE (fast path + test reference)
- ``activations``/``losses``  shared sparsifiers and loss terms
- ``presets``    the seed experiment's runs (run0..run3)
- ``checkpoint`` ``save_checkpoint`` / ``load_checkpoint`` in the SAELens directory layout
- ``windows``    window index math over a cache's sequences: starts, held-out split, epoch order
- ``loader``     ``WindowDataset`` (``[B, T, d]`` float32 batches, specials zeroed; ``mtsae.prefetch.Prefetcher`` reads ahead)
- ``config``     ``TrainConfig`` (the options of ``mtsae train``), ``load_config`` (TOML + overrides)
- ``trainer``    ``Trainer`` / ``train``: schedules, logging, checkpoints, exact resume (docs/training.md)

Nothing is imported here so that ``import mtsae.train`` stays cheap (no torch).
"""
