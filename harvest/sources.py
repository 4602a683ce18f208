"""Where the model and the text come from, and what identifies them.

Everything is loaded through the ordinary Hugging Face entry points
(`AutoConfig/AutoModel/AutoTokenizer.from_pretrained`, `datasets.load_dataset`),
for a hub id and for a local directory alike; "embedded" resolves to the
locally materialised tiny Gemma-2 and corpus. Identities (commit hashes or
file hashes) feed the cache fingerprint.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from mtsae.errors import MtsaeError
from mtsae.harvest import embedded
from mtsae.harvest import world_assets

LOCAL_DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
TEXT_BUILDERS = {"json", "csv", "text"}  # read as UTF-8 by `datasets`, which raises a bare UnicodeDecodeError otherwise
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_utf8_file(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a text file, proving in the same read that it is UTF-8 (one line naming the byte otherwise)."""
    digest, decoder, offset = hashlib.sha256(), codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
            try:
                decoder.decode(data)
            except UnicodeDecodeError as exc:
                raise MtsaeError(f"dataset file {path} is not UTF-8 text: byte {offset + exc.start} ({exc.reason}); "
                                 "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            offset += len(data)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise MtsaeError(f"dataset file {path} is not UTF-8 text: it ends inside a character ({exc.reason}); "
                             "convert it to UTF-8") from None
    return digest.hexdigest()


def _hash_files(files: list[Path], base: Path, text: bool = False) -> dict[str, str]:
    hash_file = sha256_utf8_file if text else sha256_file
    return {str(f.relative_to(base)): hash_file(f) for f in sorted(files)}


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that names a file system location is a path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or Path(spec).expanduser().exists()


# --- model -------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    name_or_path: str  # what from_pretrained receives
    identity: dict[str, Any]  # id + revision/commit or file hashes
    config: Any  # the transformers config (text part)


def resolve_model(spec: str, revision: str | None = None) -> ModelSource:
    """Find the model and its config without loading weights; errors are one line."""
    from transformers import AutoConfig

    if spec == embedded.EMBEDDED_NAME:
        path = embedded.ensure_embedded_model()
        return _local_model(path, display_id=f"{embedded.EMBEDDED_NAME}:{path.name}")
    if spec == world_assets.WORLD_NAME:
        path = world_assets.ensure_world_model()
        return _local_model(path, display_id=f"{world_assets.WORLD_NAME}:{path.name}")
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise MtsaeError(f"model path {spec} is not a Hugging Face model directory (no config.json there)")
        return _local_model(path.resolve(), display_id=str(path.resolve()))
    try:
        config = AutoConfig.from_pretrained(spec, revision=revision)
    except Exception as exc:  # hub lookups raise many types; all mean "can't get it"
        raise MtsaeError(
            f"cannot load model {spec!r}: not a local directory and the Hugging Face hub lookup failed "
            f"({_first_line(exc)}); pass a local model directory or check the id and your hub access"
        ) from None
    commit = getattr(config, "_commit_hash", None)
    return ModelSource(spec, {"id": spec, "revision": revision or commit, "commit": commit}, config)


def _local_model(path: Path, display_id: str) -> ModelSource:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise MtsaeError(f"cannot read the model config in {path}: {_first_line(exc)}") from None
    weights = [f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise MtsaeError(f"model directory {path} has no weight files (*.safetensors or *.bin)")
    tokenizer_files = [path / name for name in TOKENIZER_FILES if (path / name).is_file()]
    identity = {
        "id": display_id,
        "revision": None,
        "weights_sha256": _hash_files(weights + [path / "config.json"], path),
        "tokenizer_sha256": _hash_files(tokenizer_files, path),
    }
    return ModelSource(str(path), identity, config)


def content_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """The part of a model's or dataset's identity that decides a cache's content (its fingerprint).

    A local source is its files' hashes, whatever name or path reached it (``embedded`` and
    ``--model <its folder>`` give one fingerprint, so a shared root finds the cache); a hub
    source is its id and revision. The display ``id`` stays in the manifest either way.
    """
    if "weights_sha256" in identity or "files_sha256" in identity:
        return {key: value for key, value in identity.items() if key != "id"}
    return dict(identity)


def text_config(config: Any) -> Any:
    """Multimodal configs keep the language model's settings in ``text_config``."""
    return getattr(config, "text_config", None) or config


def check_layers(config: Any, layers: list[int], model_name: str) -> None:
    n_layers = text_config(config).num_hidden_layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise MtsaeError(
            f"layer {bad[0]} is out of range: model {model_name} has {n_layers} layers (0-{n_layers - 1}); "
            f"choose --layers within that range"
        )


def load_truncated_model(source: ModelSource, last_layer: int, dtype: torch.dtype, device: str, attn_implementation: str):
    """The model body (no LM head) with only decoder layers 0..last_layer: later layers are never built."""
    import copy

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    config = copy.deepcopy(source.config)
    text = text_config(config)
    text.num_hidden_layers = last_layer + 1
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[: last_layer + 1]
    # The weights of the skipped layers (and the LM head) are unused on purpose: silence that report,
    # and the loading bar (harvest shows one bar, its own).
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(
            source.name_or_path, config=config, dtype=dtype, attn_implementation=attn_implementation,
            revision=source.identity.get("revision"),
        )
    except Exception as exc:
        raise MtsaeError(f"cannot load model weights of {source.identity['id']}: {_first_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, revision=source.identity.get("revision"))
    except Exception as exc:
        raise MtsaeError(f"cannot load the tokenizer of {source.identity['id']}: {_first_line(exc)}") from None
    if tokenizer.bos_token_id is None:
        raise MtsaeError(f"tokenizer of {source.identity['id']} has no BOS token; mtsae prefixes every sequence with BOS")
    forged = set(tokenize_text(tokenizer, [tokenizer.bos_token])[0]) & (set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})
    if forged:  # a tokenizer that ignores split_special_tokens would let dataset text forge BOS/EOS/PAD
        raise MtsaeError(f"tokenizer of {source.identity['id']} ({type(tokenizer).__name__}) turns the text "
                         f"{tokenizer.bos_token!r} into special token(s) {sorted(forged)} even with "
                         "split_special_tokens=True; use a tokenizer class that supports it (a fast tokenizer)")
    return tokenizer


TEXT_TOKENIZATION = "add_special_tokens=False, split_special_tokens=True"
"""How dataset text becomes ids (part of the cache fingerprint): no BOS/EOS added, and a special-token
string in the text (a literal ``<bos>``) is split into ordinary tokens, never turned into the special id."""


def tokenize_text(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, special-token strings tokenized as text (see ``TEXT_TOKENIZATION``)."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


# --- dataset -----------------------------------------------------------------------------------


@dataclass
class TextSource:
    dataset: Any  # a (streaming) datasets object yielding dict rows
    identity: dict[str, Any]


def resolve_dataset(
    spec: str, *, config_name: str | None, split: str, text_column: str, revision: str | None = None
) -> TextSource:
    """Open the text dataset (streaming, so memory stays flat) and check its text column."""
    import datasets

    if spec == embedded.EMBEDDED_NAME:
        spec = str(embedded.ensure_embedded_corpus())
        display_id = f"{embedded.EMBEDDED_NAME}:{Path(spec).name}"
    elif spec == world_assets.WORLD_NAME:
        spec = str(world_assets.ensure_world_corpus())
        display_id = f"{world_assets.WORLD_NAME}:{Path(spec).name}"
    else:
        display_id = spec
    path = Path(spec).expanduser()
    if path.exists():
        files = sorted(f for f in path.rglob("*") if f.suffix in LOCAL_DATA_BUILDERS) if path.is_dir() else [path]
        builders = {LOCAL_DATA_BUILDERS.get(f.suffix) for f in files}
        if not files or None in builders or len(builders) != 1:
            raise MtsaeError(
                f"dataset path {spec} must be one kind of text file ({', '.join(sorted(LOCAL_DATA_BUILDERS))}) or a folder of them"
            )
        builder = builders.pop()
        hashes = _hash_files(files, files[0].parent if path.is_file() else path, text=builder in TEXT_BUILDERS)
        ds = _load(lambda: datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True), spec)
        identity = {"id": display_id, "split": "train", "files_sha256": hashes}
    elif _looks_like_path(spec) or Path(spec).suffix in LOCAL_DATA_BUILDERS:  # mydata.jsonl: a file, not a hub id
        raise MtsaeError(f"dataset file {spec} does not exist; check the path (relative to {Path.cwd()})")
    else:
        ds = _load(lambda: datasets.load_dataset(spec, config_name, split=split, streaming=True, revision=revision), spec)
        identity = {"id": spec, "config": config_name, "split": split, "revision": revision or _hub_dataset_sha(spec)}
    identity["text_column"] = text_column
    _check_text_column(ds, text_column, spec)
    return TextSource(ds, identity)


def _load(open_fn, spec: str):
    try:
        return open_fn()
    except Exception as exc:
        raise MtsaeError(
            f"cannot load dataset {spec!r}: {_first_line(exc)}; pass a local file/folder or check the id, split and hub access"
        ) from None


def _hub_dataset_sha(spec: str) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(spec).sha
    except Exception:
        return None  # recorded as unpinned: the fingerprint then only names the id


def _check_text_column(ds: Any, text_column: str, spec: str) -> None:
    first = next(iter(ds), None)
    if first is None:
        raise MtsaeError(f"dataset {spec} is empty: it has no rows to harvest")
    if text_column not in first:
        raise MtsaeError(
            f"dataset {spec} has no column {text_column!r} (columns: {', '.join(first)}); pass --text-column"
        )


def iter_documents(source: TextSource, tokenizer: Any, block: int = 64) -> Iterator[tuple[int, list[int]]]:
    """``(row, token_ids)`` per dataset row, tokenized without special tokens (BOS is added per sequence);
    special-token strings in the text stay text.

    Rows are tokenized ``block`` at a time: the fast tokenizer parallelises a list in Rust.
    """
    column = source.identity["text_column"]
    rows: list[int] = []
    texts: list[str] = []
    for row, record in enumerate(source.dataset):
        text = record[column]
        if not isinstance(text, str):
            raise MtsaeError(f"row {row} of dataset {source.identity['id']}: column {column!r} holds {type(text).__name__}, not text")
        rows.append(row)
        texts.append(text)
        if len(texts) == block:
            yield from zip(rows, tokenize_text(tokenizer, texts))
            rows, texts = [], []
    if texts:
        yield from zip(rows, tokenize_text(tokenizer, texts))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
