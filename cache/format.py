"""The on-disk layout of an mtsae activation cache (format version 2; version 1 is still read).

One Zarr v3 group, readable with plain ``zarr.open_group``::

    <root>/zarr.json                      attributes["mtsae"]: status + manifest
    <root>/activations/blocks.L.hook_resid_post   [n_tokens, d_model]
    <root>/tokens                         [n_tokens] int32 token ids
    <root>/special_mask                   [n_tokens] bool, True at BOS/EOS/PAD/...
    <root>/index/seq_offsets              [n_seq + 1] int64, sequence i = rows [o[i], o[i+1])
    <root>/index/doc_seq_offsets          [n_doc + 1] int64, document j = sequences [d[j], d[j+1])
    <root>/index/doc_row                  [n_doc] int64, row of document j in the source dataset

Version 2 stores bfloat16 activations with Zarr v3's ``bfloat16`` data type (cache/bfloat16.py); version 1
stored the same bytes typed uint16. Both keep the array attribute ``mtsae_dtype`` (the true dtype), and every
mtsae reader hands bfloat16 rows out as their uint16 bits, whichever version stored them. Nothing else differs:
`mtsae cache upgrade` turns a version-1 bfloat16 cache into version 2 by rewriting metadata only (cache/upgrade.py).
docs/cache-format.md is the human description of this module.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable

import numpy as np

FORMAT_NAME = "mtsae.activation-cache"
FORMAT_VERSION = 2  # what the writer writes; readers accept 1 .. FORMAT_VERSION
# The fingerprint names the content, not the layout: format 2 changed only how bfloat16 is typed, so fingerprints
# keep hashing version 1 and an upgraded cache keeps its fingerprint (and its caches/<fingerprint[:12]> folder).
FINGERPRINT_VERSION = 1
ATTRS_KEY = "mtsae"

STATUS_INCOMPLETE = "incomplete"
STATUS_COMPLETE = "complete"

TOKENS = "tokens"
SPECIAL_MASK = "special_mask"
SEQ_OFFSETS = "index/seq_offsets"
DOC_SEQ_OFFSETS = "index/doc_seq_offsets"
DOC_ROW = "index/doc_row"
INDEX_ARRAYS = (SEQ_OFFSETS, DOC_SEQ_OFFSETS, DOC_ROW)
GROUPS = ("", "activations", "index")  # every group with a zarr.json ("" is the root)
# `mtsae synth` stores its ground truth beside the cache in this group (harvest/synth.py).
GROUND_TRUTH = "ground_truth"
GROUND_TRUTH_ARRAYS = ("features", "dwell_tokens", "p_active", "scale")  # scale: since `synth --slow-scale`
# Lock files mtsae itself keeps at the root of a store while it writes it; never copied.
LOCK_FILES = (".mtsae-harvest.lock", ".mtsae-pull.lock")
# zarr's LocalStore writes <name>.<uuid4 hex>.partial and renames it into place; a kill leaves it behind.
ZARR_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")

# torch dtype name -> the NumPy dtype mtsae's readers and writers hand rows around in (bfloat16: its uint16 bits),
# which is also what format 1 stored. Format 2 stores bfloat16 as Zarr's bfloat16 (`storage_dtype`).
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


def storage_dtype(dtype_name: str, version: int = FORMAT_VERSION) -> np.dtype:
    """The NumPy dtype of the activation arrays of a format-``version`` cache of ``dtype_name``."""
    if dtype_name not in STORAGE_DTYPES:
        raise ValueError(f"unsupported activation dtype {dtype_name!r}; use one of {sorted(STORAGE_DTYPES)}")
    if dtype_name == "bfloat16" and version >= 2:
        import ml_dtypes  # only here: the CLI's option help imports this module

        return np.dtype(ml_dtypes.bfloat16)
    return STORAGE_DTYPES[dtype_name]


def storage_dtype_name(dtype_name: str, version: int = FORMAT_VERSION) -> str:
    """``storage.storage_dtype`` of a format-``version`` manifest: the Zarr data type of its activation arrays."""
    return "bfloat16" if dtype_name == "bfloat16" and version >= 2 else str(STORAGE_DTYPES[dtype_name])


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
    payload = canonical_json({"format": FORMAT_NAME, "format_version": FINGERPRINT_VERSION, **content_spec})
    return hashlib.sha256(payload.encode()).hexdigest()


# --- the names a cache consists of ---------------------------------------------------------------------
def per_token_arrays(layers: list[int]) -> list[str]:
    """The arrays with one row per token, in the writer's order: activations per layer, tokens, mask."""
    return [activation_path(layer) for layer in layers] + [TOKENS, SPECIAL_MASK]


def array_names(layers: list[int]) -> list[str]:
    """Every array of a cache holding ``layers``: the format's own list, the only names mtsae writes or deletes."""
    return per_token_arrays(layers) + list(INDEX_ARRAYS)


def n_chunks(n_tokens: int, chunk_tokens: int) -> int:
    return -(-n_tokens // chunk_tokens)


def chunk_key(array: str, index: int, ndim: int | None = None) -> str:
    """Object key of row-chunk ``index`` of ``array`` (zarr v3 default encoding: ``c/<i>/0`` for 2-D).

    ``ndim`` defaults to the format's: 2 for activations, 1 for every other array."""
    ndim = ndim if ndim is not None else (2 if array.startswith("activations/") else 1)
    return "/".join([array, "c", str(index)] + ["0"] * (ndim - 1))


def expected_objects(attrs: dict[str, Any]) -> set[str]:
    """Every object key of the complete cache that a (valid) manifest describes, relative to its root."""
    keys = {f"{group}/zarr.json".lstrip("/") for group in GROUPS}
    layers, chunks = attrs["layers"], attrs["storage"]["chunk_tokens"]
    for name in per_token_arrays(layers):
        keys.add(f"{name}/zarr.json")
        keys.update(chunk_key(name, i) for i in range(n_chunks(attrs["counts"]["tokens"], chunks)))
    for name in INDEX_ARRAYS:  # one chunk each (cache/writer.py)
        keys.update({f"{name}/zarr.json", chunk_key(name, 0)})
    return keys


_GROUND_TRUTH_KEY = re.compile(rf"{GROUND_TRUTH}/zarr\.json|{GROUND_TRUTH}/({'|'.join(GROUND_TRUTH_ARRAYS)})"
                               r"/(zarr\.json|c(/(0|[1-9][0-9]{0,8}))+)")


def is_format_object(key: str, expected: set[str]) -> bool:
    """Whether ``key`` names an object of the format: one of ``expected`` or of synth's ground-truth group."""
    return key in expected or _GROUND_TRUTH_KEY.fullmatch(key) is not None


def is_lock_file(key: str) -> bool:
    return key in LOCK_FILES


# --- the manifest, as untrusted input ---------------------------------------------------------------------
HEX64 = re.compile(r"[0-9a-f]{64}")
CRC32_MAX = 2**32 - 1


def _is_int(value: Any, low: int = 0, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def manifest_problems(attrs: Any) -> list[str]:
    """Everything wrong with an ``attrs["mtsae"]`` manifest as every reader needs it, checked against this format's
    schema (types, names, counts); [] when valid. Complete caches need their counts and checksums too.
    `provenance_problems` adds what only `mtsae cache verify` demands: the fingerprint is the one of ``content``."""
    if not isinstance(attrs, dict):
        return ["the manifest is not a JSON object"]
    problems = _header_problems(attrs)
    if problems or attrs.get("status") != STATUS_COMPLETE:
        return problems
    problems += _counts_problems(attrs.get("counts"))
    return problems or _checksum_problems(attrs)


def _header_problems(attrs: dict[str, Any]) -> list[str]:
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("format", lambda v: v == FORMAT_NAME, repr(FORMAT_NAME)),
        ("format_version", lambda v: _is_int(v, 1, FORMAT_VERSION), f"an integer from 1 to {FORMAT_VERSION}"),
        ("status", lambda v: v in (STATUS_INCOMPLETE, STATUS_COMPLETE), "'incomplete' or 'complete'"),
        # it names folders (caches/<fingerprint[:12]>), so nothing but hex digits
        ("fingerprint", lambda v: isinstance(v, str) and HEX64.fullmatch(v) is not None, "64 lowercase hex digits"),
        ("layers", lambda v: isinstance(v, list) and v and all(_is_int(x) for x in v) and len(set(v)) == len(v),
         "a non-empty list of distinct layer numbers"),
        ("d_model", lambda v: _is_int(v, 1), "a positive integer"),
        ("dtype", lambda v: isinstance(v, str) and v in STORAGE_DTYPES, f"one of {sorted(STORAGE_DTYPES)}"),
        ("storage", lambda v: isinstance(v, dict) and _is_int(v.get("chunk_tokens"), 1), "an object with a positive chunk_tokens"),
    ]
    for key, valid, want in checks:
        if not valid(attrs.get(key)):
            return [f"manifest field {key!r} is {_shown(attrs.get(key))}, expected {want}"]
    stored = storage_dtype_name(attrs["dtype"], attrs["format_version"])
    if attrs["storage"].get("storage_dtype") != stored:
        return [f"manifest storage.storage_dtype is {_shown(attrs['storage'].get('storage_dtype'))}, "
                f"but dtype {attrs['dtype']} is stored as {stored} (format {attrs['format_version']})"]
    return []


def provenance_problems(attrs: dict[str, Any]) -> list[str]:
    """For a manifest without `manifest_problems`: fields that restate ``content`` agree with it, and the
    fingerprint is the sha256 of ``content``. (This proves the manifest is self-consistent, not that the
    stored values came from that recipe: anyone can recompute a fingerprint.)"""
    content = attrs.get("content")
    if not isinstance(content, dict):
        return [f"manifest field 'content' is {_shown(content)}, expected an object"]
    problems = []
    hooks = [hook_name(layer) for layer in attrs["layers"]]
    if attrs.get("hook_names") != hooks:
        problems.append(f"manifest hook_names {_shown(attrs.get('hook_names'))} do not match its layers {attrs['layers']}")
    for key in ("dtype", "hook_names", "context_len"):
        if key in content and content[key] != attrs.get(key):
            problems.append(f"manifest {key} {_shown(attrs.get(key))} disagrees with content.{key} {_shown(content[key])}")
    if fingerprint(content) != attrs["fingerprint"]:
        problems.append(f"manifest fingerprint {attrs['fingerprint'][:12]} is not the sha256 of its content "
                        f"({fingerprint(content)[:12]}): the content or the fingerprint was altered")
    return problems


def _counts_problems(counts: Any) -> list[str]:
    names = ("tokens", "sequences", "documents")
    if not isinstance(counts, dict) or not all(_is_int(counts.get(n)) for n in names):
        return [f"manifest field 'counts' is {_shown(counts)}, expected non-negative tokens, sequences, documents"]
    if not counts["documents"] <= counts["sequences"] <= counts["tokens"]:
        return [f"manifest counts {counts} are impossible (documents <= sequences <= tokens)"]
    return []


def _checksum_problems(attrs: dict[str, Any]) -> list[str]:
    """Every array of the format has its checksums, and nothing else has: names, counts and value types."""
    table = attrs.get("checksums")
    if not isinstance(table, dict) or table.get("algorithm") != "crc32":
        return [f"manifest checksums are {_shown(table)}, expected an object with algorithm 'crc32'"]
    chunks, arrays = table.get("chunks"), table.get("arrays")
    if not isinstance(chunks, dict) or not isinstance(arrays, dict):
        return ["manifest checksums lack their 'chunks' or 'arrays' table"]
    problems = _names_problems("checksums.chunks", chunks, per_token_arrays(attrs["layers"]))
    problems += _names_problems("checksums.arrays", arrays, list(INDEX_ARRAYS))
    want = n_chunks(attrs["counts"]["tokens"], attrs["storage"]["chunk_tokens"])
    for name, values in chunks.items():
        if not isinstance(values, list) or len(values) != want or not all(_is_int(v, 0, CRC32_MAX) for v in values):
            problems.append(f"manifest checksums.chunks[{_shown(name)}] must be {want} crc32 values, one per chunk")
    problems += [f"manifest checksums.arrays[{_shown(name)}] is not a crc32 value"
                 for name, value in arrays.items() if not _is_int(value, 0, CRC32_MAX)]
    return problems


def _names_problems(where: str, table: dict[str, Any], names: list[str]) -> list[str]:
    unknown = [_shown(name) for name in table if name not in names]
    missing = [name for name in names if name not in table]
    return ([f"manifest {where} names {', '.join(unknown)}, not an array of this cache"] if unknown else []) + \
           ([f"manifest {where} has no entry for {', '.join(missing)}"] if missing else [])


def _shown(value: Any, limit: int = 60) -> str:
    """A value from untrusted input, short and on one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_manifest(attrs: Any, where: str) -> None:
    """Raise one line for an invalid manifest (see `manifest_problems`)."""
    from mtsae.errors import MtsaeError

    problems = manifest_problems(attrs)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise MtsaeError(f"cache at {where} has an invalid manifest: {problems[0]}{more}; "
                         f"it is damaged or was not written by mtsae")


# --- the arrays against the manifest ----------------------------------------------------------------------
def expected_arrays(attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per array of a valid complete manifest: the shape, chunk shape, stored dtype and attributes it must have."""
    counts, rows = attrs["counts"], attrs["storage"]["chunk_tokens"]
    n, d = counts["tokens"], attrs["d_model"]
    stored = storage_dtype(attrs["dtype"], attrs["format_version"])
    arrays = {activation_path(layer): {"shape": (n, d), "chunks": (rows, d), "dtype": stored,
                                       "attrs": {"mtsae_dtype": attrs["dtype"], "hook_name": hook_name(layer), "layer": layer}}
              for layer in attrs["layers"]}
    arrays[TOKENS] = {"shape": (n,), "chunks": (rows,), "dtype": np.dtype("int32"), "attrs": {}}
    arrays[SPECIAL_MASK] = {"shape": (n,), "chunks": (rows,), "dtype": np.dtype("bool"), "attrs": {}}
    for name, length in ((SEQ_OFFSETS, counts["sequences"] + 1), (DOC_SEQ_OFFSETS, counts["documents"] + 1),
                         (DOC_ROW, counts["documents"])):
        arrays[name] = {"shape": (length,), "chunks": (max(length, 1),), "dtype": np.dtype("int64"), "attrs": {}}
    return arrays


def array_problems(group: Any, attrs: dict[str, Any]) -> dict[str, str]:
    """Array name -> what about its metadata disagrees with the (valid, complete) manifest; {} when all agree.

    ``group`` is the cache's zarr group; an array whose ``zarr.json`` is missing or unreadable is a problem too.
    """
    problems = {}
    for name, want in expected_arrays(attrs).items():
        try:
            arr = group[name]
            have = {"shape": tuple(arr.shape), "chunks": tuple(arr.chunks), "dtype": arr.dtype,
                    "attrs": {key: arr.attrs.get(key) for key in want["attrs"]}}
        except Exception as exc:  # zarr raises KeyError, ValueError, JSON errors... for missing or bad metadata
            problems[name] = f"its zarr.json is missing or unreadable ({type(exc).__name__})"
            continue
        if have["dtype"] in _retyped_by_upgrade(attrs, name):
            have["dtype"] = want["dtype"]
        wrong = [key for key in ("shape", "chunks", "dtype", "attrs") if have[key] != want[key]]
        if wrong:
            key = wrong[0]
            problems[name] = f"{key} is {_shown(have[key])} but the manifest implies {_shown(want[key])}"
    return problems


def _retyped_by_upgrade(attrs: dict[str, Any], name: str) -> tuple[np.dtype, ...]:
    """The other dtype an array of a version-1 manifest may have: an interrupted `mtsae cache upgrade` retyped
    some of its bfloat16 arrays (same bytes) before it could write the version-2 manifest, the last step."""
    if attrs["format_version"] == 1 and attrs["dtype"] == "bfloat16" and name.startswith("activations/"):
        return (storage_dtype("bfloat16", 2),)
    return ()
