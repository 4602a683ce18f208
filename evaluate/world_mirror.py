"""The world mirror: SAE-Bench's datasets and models for the trained world LM, offline.

Like :mod:`mtsae.evaluate.embedded_mirror` (same folder layout, manifest and loader,
:mod:`mtsae.evaluate.offline`), but the model has learned the fictional world of
:mod:`mtsae.harvest.world`, so SAE-Bench's own evals score on it:

* **unlearning** — ``cais/wmdp`` ``wmdp-bio`` = held-out multiple-choice questions about
  the forget topic (``pathogens``; the exam entities' facts, taught only by documents);
  ``cais/mmlu`` subsets = questions about retain topics, one topic per SAE-Bench retain
  subject; the forget corpus (latent selection) = forget-topic documents from a stream
  neither training nor the questions use; ``wikitext`` (the retain side of latent
  selection) = retain-topic documents;
* **sparse probing / absorption / core** — the probing datasets are the embedded mirror's
  (topic classes over the embedded vocabulary, which the world LM read as filler text in
  every document); core's ``openwebtext`` is the world corpus.

Models: ``world`` (alias ``world:world-lm-v3``, the id the cache records) and
``world-it``, both the shipped folder (:func:`mtsae.harvest.world_assets.ensure_world_model`);
``world-it`` is registered with transformer_lens name ``gemma-2-2b-it`` so SAE-Bench's
unlearning eval uses its Gemma chat prompt and letter tokens. The LM learned to answer
in that format from practice questions about other entities; nothing was
instruction-tuned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from mtsae.evaluate import embedded_mirror as E
from mtsae.evaluate.offline import MANIFEST, write_manifest
from mtsae.evaluate.synthetic import TextMaker
from mtsae.harvest import world as W
from mtsae.harvest import world_assets
from mtsae.home import mtsae_home

WORLD_MIRROR_VERSION = 1  # bump when the generated content changes
_TEXT_SEED = 1
FORGET_CORPUS_DOCUMENTS = 64
RETAIN_DOCUMENTS = 96
# SAE-Bench's default unlearning retain subjects (UnlearningEvalConfig.dataset_names) -> a world retain topic.
MMLU_TOPICS = {
    "high_school_us_history": "finance", "college_computer_science": "programming",
    "high_school_geography": "weather", "human_aging": "cooking", "college_biology": "biology",
}


def mirror_dir(rows: int, model: Path, home: Path | None = None) -> Path:
    """The mirror's folder: one per world, mirror content, ``rows`` and *model* — the manifest names the model's
    folder, so a model version (or weights) bump or an install elsewhere must not reuse a mirror that points at
    the old folder (it did: SAE-Bench then read a retired model's folder, or a deleted one)."""
    root = Path(home if home is not None else mtsae_home()) / world_assets.WORLD_NAME
    model_id = f"{world_assets.MODEL_DIRNAME}\0{world_assets.WEIGHTS_SHA256}\0{Path(model).resolve()}"
    tag = hashlib.sha256(model_id.encode()).hexdigest()[:12]
    return root / f"sae-bench-mirror-w{W.WORLD_VERSION}-v{WORLD_MIRROR_VERSION}-rows{rows}-{tag}"


def ensure_world_mirror(rows: int = E.rows_needed(40, 20), home: Path | None = None) -> Path:
    """Materialise (once per ``rows`` and model) and return the world mirror folder."""
    model = world_assets.ensure_world_model()
    return E._materialise(mirror_dir(rows, model, home), MANIFEST, lambda root: _write_mirror(root, rows, model))


def _write_mirror(root: Path, rows: int, model: Path) -> None:
    world = W.build_world(world_assets.WORLD_SEED)
    mk = TextMaker(seed=_TEXT_SEED)
    datasets: dict[str, Any] = {name: build(root, mk, rows) for name, build in E.DATASETS.items()
                                if name not in WORLD_DATASETS}  # probing: the embedded mirror's
    datasets.update({name: build(root, world) for name, build in WORLD_DATASETS.items()})
    corpus = E._write_jsonl(root / "wmdp" / "bio-forget-corpus.jsonl", _forget_corpus(world))
    name = world_assets.WORLD_NAME
    models = {name: {"path": str(model), "tl_name": name},
              f"{name}-it": {"path": str(model), "tl_name": "gemma-2-2b-it"}}
    aliases = {f"{name}:{world_assets.MODEL_DIRNAME}": name}
    write_manifest(root, models, datasets, aliases, forget_corpus=str(corpus.relative_to(root)))


def _openwebtext(root: Path, world: W.World) -> dict[str, Any]:
    docs = [{"text": d["text"]} for d in world_assets.corpus_documents(64)]
    return E._splits(root, "openwebtext", {"train": docs})


def _wmdp(root: Path, world: W.World) -> dict[str, Any]:
    rows = [_mc_row(q) for q in W.exam_questions(world, W.FORGET_TOPIC)]
    return {"configs": {"wmdp-bio": E._splits(root, "wmdp/wmdp-bio", {"test": rows})}}


def _mmlu(root: Path, world: W.World) -> dict[str, Any]:
    configs = {}
    for subject, topic in MMLU_TOPICS.items():
        rows = [{**_mc_row(q), "subject": subject} for q in W.exam_questions(world, topic)]
        configs[subject] = E._splits(root, f"mmlu/{subject}", {"test": rows})
    return {"configs": configs}


def _mc_row(question: dict) -> dict:
    return {"question": question["question"], "choices": question["choices"], "answer": question["answer"]}


def _forget_corpus(world: W.World) -> list[dict]:
    return [{"title": d["id"], "abstract": "", "text": d["text"], "doi": f"10.0000/mtsae-world.{n}"}
            for n, d in enumerate(W.forget_corpus(world, FORGET_CORPUS_DOCUMENTS))]


def _wikitext(root: Path, world: W.World) -> dict[str, Any]:
    """Retain-topic documents, one line each, with wikitext's blank lines between them."""
    lines = [row for d in W.retain_corpus(world, RETAIN_DOCUMENTS)
             for row in ({"text": d["text"].replace("\n", " ") + "\n"}, {"text": ""})]
    return {"configs": {"wikitext-2-raw-v1": E._splits(root, "wikitext", {"test": lines})}}


# The datasets whose content is the world's; every other dataset is the embedded mirror's.
WORLD_DATASETS = {"Skylion007/openwebtext": _openwebtext, "cais/wmdp": _wmdp, "cais/mmlu": _mmlu, "wikitext": _wikitext}
