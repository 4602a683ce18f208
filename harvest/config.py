"""Harvest settings: one dataclass, each field documented once (that text is the CLI's --help)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtsae.cache.format import STORAGE_DTYPES
from mtsae.errors import MtsaeError

ATTENTION_IMPLEMENTATIONS = ("eager", "flex_attention")


def _doc(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class HarvestConfig:
    """What the user asked for; never changed. harvest/plan.py resolves it (sorted layers, context length)."""

    model: str = _doc("Hugging Face model id or local model directory; 'embedded' is the offline tiny Gemma-2.", default="embedded")
    model_revision: str | None = _doc("Hub revision (branch, tag or commit) of the model.", default=None)
    dataset: str = _doc(
        "Hugging Face dataset id, a local .jsonl/.json/.parquet/.csv/.txt file or folder; 'embedded' is the offline corpus.",
        default="embedded",
    )
    dataset_config: str | None = _doc("Dataset configuration name (hub datasets).", default=None)
    dataset_revision: str | None = _doc("Hub revision of the dataset.", default=None)
    split: str = _doc("Dataset split (hub datasets; local files are one 'train' split).", default="train")
    text_column: str = _doc("Column holding the text.", default="text")
    layers: list[int] = _doc("Decoder layers whose resid_post to store (blocks.L.hook_resid_post).", default_factory=lambda: [5, 19])
    context_len: int | None = _doc(
        "Tokens per model context, BOS included; longer documents continue in a new context. "
        "Default: 1024, or the model's max_position_embeddings if smaller.",
        default=None,
    )
    max_tokens: int = _doc("Token budget (BOS included); harvest stops earlier if the dataset ends.", default=262_144)
    batch_size: int = _doc("Sequences per forward pass.", default=16)
    dtype: str = _doc("Stored activation dtype: bfloat16, float16 or float32. The model computes in it, or in float32 "
                      "on a CPU without native half precision (rounded once when stored).", default="bfloat16")
    device: str = _doc("'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...", default="auto")
    attn_implementation: str = _doc("Attention kernel: eager or flex_attention (Gemma-2 has no sdpa path).", default="eager")
    chunk_tokens: int = _doc("Tokens per Zarr chunk (rows of each activation array).", default=4096)
    compression: str = _doc("none (raw chunks, memory-mappable by train), zstd or blosc.", default="none")

    def validate(self) -> None:
        """Check values without touching the disk or the network."""
        from mtsae.cache.writer import COMPRESSIONS  # zarr: not needed to read this class's help

        checks = [
            (bool(self.layers), "--layers needs at least one layer"),
            (all(layer >= 0 for layer in self.layers), f"--layers must be non-negative, got {self.layers}"),
            (len(set(self.layers)) == len(self.layers), f"--layers lists a layer twice: {self.layers}"),
            (
                self.context_len is None or self.context_len >= 2,
                f"--context-len must be at least 2 (BOS + one token), got {self.context_len}",
            ),
            (self.max_tokens >= 2, f"--max-tokens must be at least 2, got {self.max_tokens}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.chunk_tokens >= 1, f"--chunk-tokens must be at least 1, got {self.chunk_tokens}"),
            (self.dtype in STORAGE_DTYPES, f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {self.dtype!r}"),
            (self.compression in COMPRESSIONS, f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"),
            (
                self.attn_implementation in ATTENTION_IMPLEMENTATIONS,
                f"--attn-implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got {self.attn_implementation!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise MtsaeError(message)


DEFAULT_CONTEXT_LEN = 1024


def default_context_len(max_position_embeddings: int | None) -> int:
    return min(DEFAULT_CONTEXT_LEN, max_position_embeddings or DEFAULT_CONTEXT_LEN)
