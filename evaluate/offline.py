"""An offline mirror: local model directories and dataset files under SAE-Bench's names.

A mirror is a folder with ``mirror.json``::

    {
      "format": "mtsae-sae-bench-mirror/1",
      "models": {
        "gemma-2-2b":    {"path": "/data/hf/gemma-2-2b"},
        "gemma-2-2b-it": {"path": "/data/hf/gemma-2-2b-it", "tl_name": "gemma-2-2b-it"}
      },
      "aliases": {"google/gemma-2-2b": "gemma-2-2b"},
      "datasets": {
        "Skylion007/openwebtext": {"splits": {"train": "openwebtext/train.jsonl"}},
        "cais/mmlu": {"configs": {"human_aging": {"splits": {"test": "mmlu/human_aging.jsonl"}}}}
      },
      "forget_corpus": "wmdp/bio-forget-corpus.jsonl"
    }

Relative paths are relative to the folder. Files load with ``datasets``'
packaged builders (json/jsonl, parquet, csv), so a dataset keeps the columns
and types SAE-Bench reads from the hub version. ``tl_name`` is what
``model.cfg.model_name`` becomes (default: the entry's name); SAE-Bench keys its
per-model choices on it (the unlearning eval only accepts gemma-2-2b-it /
gemma-2-9b-it there). :func:`mtsae.evaluate.embedded_mirror.ensure_embedded_mirror`
writes such a folder for the embedded tiny model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtsae.errors import MtsaeError
from mtsae.evaluate.models import ModelDims, local_model_dims
from mtsae.evaluate.names import canonical_model_name

MANIFEST = "mirror.json"
FORMAT = "mtsae-sae-bench-mirror/1"
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    tl_name: str


@dataclass
class OfflineMirror:
    root: Path
    models: dict[str, LocalModel]
    aliases: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    forget_corpus: Path | None = None

    # ------------------------------------------------------------------ models
    def model(self, name: str) -> LocalModel:
        """The local model registered as ``name`` (exactly, through an alias, or by canonical name)."""
        name = self.aliases.get(name, name)
        if name in self.models:
            return self.models[name]
        matches = [m for key, m in self.models.items() if canonical_model_name(key) == canonical_model_name(name)]
        if len(matches) == 1:
            return matches[0]
        raise MtsaeError(
            f"model {name!r} is not in the offline mirror {self.root} (it has: {', '.join(sorted(self.models))}); "
            f"add it to {MANIFEST} or pass --model with one of those names"
        )

    def model_dims(self, name: str) -> ModelDims:
        return local_model_dims(self.model(name).path)

    # ---------------------------------------------------------------- datasets
    def data_files(self, path: str, name: str | None) -> dict[str, str]:
        """``{split: file}`` for hub dataset ``path`` (configuration ``name``)."""
        entry = self.datasets.get(path)
        if entry is None:
            raise MtsaeError(
                f"dataset {path!r} is not in the offline mirror {self.root} (it has: {', '.join(sorted(self.datasets))})"
            )
        if "configs" in entry:
            if name not in entry["configs"]:
                raise MtsaeError(
                    f"dataset {path!r} has no configuration {name!r} in the offline mirror {self.root} "
                    f"(it has: {', '.join(sorted(entry['configs']))})"
                )
            entry = entry["configs"][name]
        return {split: str(self.root / file) for split, file in entry["splits"].items()}

    def load_dataset(self, path: str, name: str | None = None, *, split: str | None = None,
                     streaming: bool = False, **_ignored: Any):
        """``datasets.load_dataset`` for a mirrored hub dataset.

        Hub-only arguments (``trust_remote_code``, the github-code script's
        ``languages`` filter) are dropped: SAE-Bench filters the rows itself.
        """
        import datasets

        files = self.data_files(path, name)
        builder = _builder(next(iter(files.values())))
        if split is not None and split not in files:
            raise MtsaeError(f"dataset {path!r} ({name}) has no split {split!r} in the offline mirror {self.root}")
        return datasets.load_dataset(builder, data_files=files, split=split, streaming=streaming)


def _builder(file: str) -> str:
    suffix = Path(file).suffix
    if suffix not in _BUILDERS:
        raise MtsaeError(f"offline dataset file {file} must be one of {', '.join(_BUILDERS)}")
    return _BUILDERS[suffix]


def load_mirror(root: str | Path) -> OfflineMirror:
    """Read ``<root>/mirror.json``; ``MtsaeError`` for a missing or malformed manifest."""
    root = Path(root).expanduser().resolve()
    manifest_path = root / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise MtsaeError(f"{root} is not an offline mirror (no {MANIFEST}); see docs/evaluation.md") from None
    except ValueError as exc:
        raise MtsaeError(f"{manifest_path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise MtsaeError(f"{manifest_path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    models = {
        name: LocalModel(name, root / spec["path"], spec.get("tl_name", name))
        for name, spec in manifest.get("models", {}).items()
    }
    corpus = manifest.get("forget_corpus")
    return OfflineMirror(root, models, dict(manifest.get("aliases", {})), dict(manifest.get("datasets", {})),
                         root / corpus if corpus else None)


def write_manifest(root: Path, models: dict[str, dict[str, str]], datasets: dict[str, Any],
                   aliases: dict[str, str] | None = None, forget_corpus: str | None = None) -> Path:
    manifest = {"format": FORMAT, "models": models, "aliases": aliases or {}, "datasets": datasets}
    if forget_corpus:
        manifest["forget_corpus"] = forget_corpus
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
