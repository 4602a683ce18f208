"""The on-disk layout of an mtsae activation cache (format version 1).

One Zarr v3 group, readable with plain ``zarr.open_group``::

    <root>/zarr.json                      attributes["mtsae"]: status + manifest
    <root>/activations/blocks.L.hook_resid_post   [n_tokens, d_model]
    <root>/tokens                         [n_tokens] int32 token ids
    <root>/special_mask                   [n_tokens] bool, True at BOS/EOS/PAD/...
    <root>/index/seq_offsets              [n_seq + 1] int64, sequence i = rows [o[i], o[i+1])
    <root>/index/doc_seq_offsets          [n_doc + 1] int64, document j = sequences [d[j], d[j+1])
    <root>/index/doc_row                  [n_doc] int64, row of document j in the source dataset

bfloat16 has no NumPy/Zarr dtype, so bfloat16 activations are stored as their
raw uint16 bits and the array's attribute ``mtsae_dtype`` names the true dtype.
docs/cache-format.md is the human description of this module.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

FORMAT_NAME = "mtsae.activation-cache"
FORMAT_VERSION = 1
ATTRS_KEY = "mtsae"

STATUS_INCOMPLETE = "incomplete"
STATUS_COMPLETE = "complete"

TOKENS = "tokens"
SPECIAL_MASK = "special_mask"
SEQ_OFFSETS = "index/seq_offsets"
DOC_SEQ_OFFSETS = "index/doc_seq_offsets"
DOC_ROW = "index/doc_row"

# torch dtype name -> (numpy dtype actually stored, is a bit-reinterpretation)
STORAGE_DTYPES: dict[str, np.dtype] = {
    "bfloat16": np.dtype("uint16"),
    "float16": np.dtype("float16"),
    "float32": np.dtype("float32"),
}


def hook_name(layer: int) -> str:
    """TransformerLens name of the residual stream after decoder layer ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def activation_path(layer: int) -> str:
    return f"activations/{hook_name(layer)}"


def storage_dtype(dtype_name: str) -> np.dtype:
    try:
        return STORAGE_DTYPES[dtype_name]
    except KeyError:
        raise ValueError(f"unsupported activation dtype {dtype_name!r}; use one of {sorted(STORAGE_DTYPES)}") from None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def model_revision(identity: dict[str, Any]) -> str | None:
    """A manifest's model identity as one revision string: the hub revision or commit, else a hash of the local
    weight files' sha256 list."""
    if identity.get("revision") or identity.get("commit"):
        return identity.get("revision") or identity.get("commit")
    weights = identity.get("weights_sha256")
    return f"local weights {hashlib.sha256(canonical_json(weights).encode()).hexdigest()[:12]}" if weights else None


def fingerprint(content_spec: dict[str, Any]) -> str:
    """sha256 of everything that determines the cache's content (not its layout)."""
    payload = canonical_json({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **content_spec})
    return hashlib.sha256(payload.encode()).hexdigest()
