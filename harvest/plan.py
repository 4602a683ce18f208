"""The harvest plan: a ``HarvestConfig`` resolved once against the model and the dataset, then frozen.

``resolve_plan`` is the only place that turns the user's settings into what a
harvest does: layers sorted, the context length defaulted from the model, the
compute dtype chosen for the device, the content spec and its fingerprint. The
one-process run (harvest/run.py) and the torchrun ranks (harvest/parallel.py)
both consume the same plan: its sequence stream, its store header and its
completion manifest, so the two paths cannot drift apart. The model is loaded
and the store created only when a path asks (``load_model``, ``create_store``).
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Iterator

import torch

import mtsae
from mtsae.cache import CacheWriter
from mtsae.cache import format as fmt
from mtsae.devices import compute_dtype, resolve_device
from mtsae.errors import MtsaeError
from mtsae.harvest import sources
from mtsae.harvest.config import HarvestConfig, default_context_len
from mtsae.harvest.sequences import DocumentLedger, Sequence, iter_sequences

SEQUENCE_POLICY = "one document per sequence; BOS prefixed to every sequence; long documents continue after a new BOS"


@dataclass(frozen=True)
class SpecialTokens:
    """The tokenizer's special ids as a harvest uses them."""

    bos_id: int
    pad_id: int | None
    eos_id: int | None
    special_ids: tuple[int, ...]  # sorted

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokens":
        return cls(tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
                   tuple(sorted(set(tokenizer.all_special_ids))))

    @property
    def padding_id(self) -> int:
        """What pads a batch: the pad token, or BOS for a tokenizer without one (padding is masked out)."""
        return self.pad_id if self.pad_id is not None else self.bos_id


@dataclass(frozen=True)
class HarvestPlan:
    """Everything a harvest will do; ``config`` is the resolved settings, recorded in the store as they ran."""

    config: HarvestConfig  # layers sorted, context_len filled in, batch_size as run
    model_source: sources.ModelSource
    text_source: sources.TextSource
    compute_dtype: str  # the dtype the model runs in (float32 on a CPU without native half precision)
    d_model: int
    content: dict[str, Any]  # what determines the cache's bytes (cache/format.py fingerprints it)
    fingerprint: str

    def with_batch_size(self, batch_size: int) -> "HarvestPlan":
        """The same plan with another batch size: resuming a store reruns its own batches (same bytes)."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, batch_size=batch_size))

    def load_model(self, device):
        """The model cut after the deepest requested layer, in the compute dtype, with the chosen attention."""
        return sources.load_truncated_model(self.model_source, max(self.config.layers), getattr(torch, self.compute_dtype),
                                            device, self.config.attn_implementation)

    def sequences(self, tokenizer, ledger: DocumentLedger | None = None) -> Iterator[Sequence]:
        """The harvest's sequence stream, the same on every rank and in every run; ``ledger`` watches the documents."""
        cfg = self.config
        documents = sources.iter_documents(self.text_source, tokenizer)
        specials = SpecialTokens.of(tokenizer)
        return iter_sequences(ledger.track(documents) if ledger is not None else documents, context_len=cfg.context_len,
                              bos_id=specials.bos_id, special_ids=set(specials.special_ids), max_tokens=cfg.max_tokens)

    def no_tokens_error(self) -> MtsaeError:
        return MtsaeError(f"dataset {self.text_source.identity['id']} yielded no tokens in column {self.config.text_column!r}")

    def create_store(self, out: str) -> CacheWriter:
        """Create the (incomplete) store at ``out`` with this plan's layout and header."""
        cfg = self.config
        return CacheWriter.create(out, layers=cfg.layers, d_model=self.d_model, dtype_name=cfg.dtype,
                                  capacity_tokens=cfg.max_tokens, chunk_tokens=cfg.chunk_tokens,
                                  compression=cfg.compression, header=self.header())

    def header(self) -> dict[str, Any]:
        """The attributes a store gets at creation (status incomplete)."""
        cfg = self.config
        return {
            "fingerprint": self.fingerprint,
            "content": self.content,
            "description": "Residual-stream activations harvested by mtsae; see docs/cache-format.md of the mtsae project.",
            "model": self.model_source.identity,
            "dataset": self.text_source.identity,
            "layers": cfg.layers,
            "hook_names": [fmt.hook_name(layer) for layer in cfg.layers],
            "context_len": cfg.context_len,
            "dtype": cfg.dtype,
            "compute_dtype": self.compute_dtype,
            "d_model": self.d_model,
            "mtsae_version": mtsae.__version__,
            "config": dataclasses.asdict(cfg),
        }

    def completion_manifest(self, counts, ledger, specials: SpecialTokens, seconds: float, resumed_tokens: int,
                            device) -> dict[str, Any]:
        """What `CacheWriter.finish`/`commit` adds to the header; ``counts`` has n_tokens, n_sequences, n_documents
        and ``ledger`` tells whether the dataset ran out and the budget cut the last document."""
        return {
            "counts": {"tokens": counts.n_tokens, "sequences": counts.n_sequences, "documents": counts.n_documents},
            "dataset_exhausted": ledger.exhausted,
            "last_document_truncated": ledger.last_truncated,
            "sequence_policy": SEQUENCE_POLICY,
            "special_tokens": {"bos_id": specials.bos_id, "pad_id": specials.pad_id, "eos_id": specials.eos_id,
                               "special_ids": list(specials.special_ids)},
            "harvest": {
                "seconds": round(seconds, 3),
                "tokens_per_second": round((counts.n_tokens - resumed_tokens) / seconds, 1),
                "resumed_at_tokens": resumed_tokens,
                "batch_size": self.config.batch_size,
                "device": str(device),
                "attn_implementation": self.config.attn_implementation,
                "torch": torch.__version__,
                "transformers": version("transformers"),
                "zarr": version("zarr"),
                "python": platform.python_version(),
            },
        }


def resolve_plan(cfg: HarvestConfig) -> HarvestPlan:
    """Check ``cfg``, find the model (config only) and the dataset (streaming), and fix every derived setting."""
    cfg.validate()
    layers = sorted(cfg.layers)
    model_source = sources.resolve_model(cfg.model, cfg.model_revision)
    sources.check_layers(model_source.config, layers, cfg.model)
    model_config = sources.text_config(model_source.config)
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if cfg.context_len is not None and max_positions and cfg.context_len > max_positions:
        raise MtsaeError(f"--context-len {cfg.context_len} exceeds the model's {max_positions} positions; lower it")
    context_len = cfg.context_len if cfg.context_len is not None else default_context_len(max_positions)
    text_source = sources.resolve_dataset(
        cfg.dataset, config_name=cfg.dataset_config, split=cfg.split, text_column=cfg.text_column, revision=cfg.dataset_revision
    )
    resolved = dataclasses.replace(cfg, layers=layers, context_len=context_len)
    compute = compute_dtype(cfg.dtype, resolve_device(cfg.device))
    content = content_spec(resolved, compute, model_source, text_source)
    return HarvestPlan(resolved, model_source, text_source, compute, model_config.hidden_size, content,
                       fmt.fingerprint(content))


def content_spec(cfg: HarvestConfig, compute: str, model_source, text_source) -> dict[str, Any]:
    """Everything that determines the cache's bytes up to floating-point order (not layout, device or batch size)."""
    return {
        "model": sources.content_identity(model_source.identity),
        "dataset": sources.content_identity(text_source.identity),
        "text_tokenization": sources.TEXT_TOKENIZATION,
        "hook_names": [fmt.hook_name(layer) for layer in cfg.layers],
        "context_len": cfg.context_len,
        "max_tokens": cfg.max_tokens,
        "dtype": cfg.dtype,
        "sequence_policy": SEQUENCE_POLICY,
        # Only when it differs, so caches computed in their stored dtype keep their fingerprints.
        **({"compute_dtype": compute} if compute != cfg.dtype else {}),
    }
