"""The trained world LM that ships with mtsae, and the world corpus harvested from it.

``--model world`` names the Gemma-2 trained by ``scripts/train_world_lm.py`` on the
fictional world (:mod:`mtsae.harvest.world`, docs/world.md). Its weights live in the
package (``harvest/world-lm-v3/``) and are pinned by sha256 here: a weights file that
does not match is refused with one ``error:`` line, so every machine harvests the
same model. ``--dataset world`` is a corpus of world documents from a stream the LM
was not trained on (same facts, other sentences), written once under
``$MTSAE_HOME/world/``.

The cache records the model as ``world:world-lm-v3``; the evaluation mirror
(:mod:`mtsae.evaluate.world_mirror`) serves SAE-Bench's datasets from the same world.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtsae.durable import materialise_file
from mtsae.errors import MtsaeError
from mtsae.harvest import world as W
from mtsae.harvest.world_lm import sha256_of
from mtsae.home import mtsae_home

WORLD_NAME = "world"
MODEL_DIRNAME = "world-lm-v3"
MODEL_DIR = Path(__file__).resolve().parent / MODEL_DIRNAME
WEIGHTS_FILE = "model.safetensors"
# sha256 of MODEL_DIR/model.safetensors, as written by scripts/train_world_lm.py (see docs/world.md).
WEIGHTS_SHA256 = "29d7c39a734d5d91fdb36d732f6b6a9aac710e131ecacebe2c6295befb9e45ea"
WORLD_SEED = 0
CORPUS_STREAM = "harvest"  # not "train": the harvest corpus is text the LM never read
CORPUS_DOCUMENTS = 800  # ~270k tokens: more than the harvest default budget (262,144)
CORPUS_FILENAME = f"world-corpus-v{W.WORLD_VERSION}-seed{WORLD_SEED}.jsonl"


def check_world_model(directory: Path = MODEL_DIR, expected: str = WEIGHTS_SHA256) -> Path:
    """The model folder, after proving its weights are the pinned ones and its world is this one."""
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise MtsaeError(f"the world model's weights are missing ({weights}); reinstall mtsae or "
                         "retrain them with scripts/train_world_lm.py (docs/world.md)")
    actual = sha256_of(weights)
    if actual != expected:
        raise MtsaeError(f"the world model's weights {weights} have sha256 {actual[:16]}…, not the pinned "
                         f"{expected[:16]}…; the file is corrupt or replaced: reinstall mtsae")
    try:
        recorded = json.loads((directory / "world.json").read_text())
        version, seed = recorded["world_version"], recorded["world_seed"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MtsaeError(f"{directory}/world.json is missing or unreadable; reinstall mtsae") from None
    if (version, seed) != (W.WORLD_VERSION, WORLD_SEED):
        raise MtsaeError(f"the world model was trained on world v{version} seed {seed}, but this mtsae builds "
                         f"world v{W.WORLD_VERSION} seed {WORLD_SEED}; retrain it (docs/world.md)")
    return directory


def check_world_version(trained: str) -> None:
    """SAEs trained on another version of the world LM (``world:world-lm-v2`` against v3) are refused."""
    if trained.startswith(WORLD_NAME + ":") and trained != f"{WORLD_NAME}:{MODEL_DIRNAME}":
        raise MtsaeError(f"the checkpoints were trained on {trained}, but this mtsae ships "
                         f"{WORLD_NAME}:{MODEL_DIRNAME} (another world or model version); "
                         "re-harvest and retrain with this version")


def ensure_world_model() -> Path:
    """The shipped world model's Hugging Face folder (checked against its pinned sha256)."""
    return check_world_model()


def corpus_documents(count: int = CORPUS_DOCUMENTS) -> list[dict]:
    """World documents of every topic from the harvest stream (never read in training)."""
    world = W.build_world(WORLD_SEED)
    return [W.document(world, CORPUS_STREAM, i) for i in range(count)]


def ensure_world_corpus(home: Path | None = None) -> Path:
    """Materialise (once) and return the world corpus's JSONL path."""
    def write(path: Path) -> None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for doc in corpus_documents():
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")

    root = Path(home if home is not None else mtsae_home()) / WORLD_NAME
    return materialise_file(root / CORPUS_FILENAME, write)
