"""The embedded default: a tiny Gemma-2 and an offline corpus, materialised on disk.

When no real model or dataset is named (``--model embedded --dataset embedded``,
the CLI default), the pipeline still runs end to end, offline, through exactly
the code paths a real run uses:

* ``ensure_embedded_model()`` writes a Hugging Face model directory that loads
  with ``AutoModelForCausalLM.from_pretrained(path)``, ``AutoModel.from_pretrained(path)``
  and ``AutoTokenizer.from_pretrained(path)``. The model is the real
  ``Gemma2ForCausalLM`` architecture with gemma-2-2b's depth (26 layers, so
  layers 5, 19 and 20-25 exist) but a 64-wide residual stream. **Its weights are
  random** (seeded, deterministic): activations have real shapes and real
  architectural structure (sliding/full attention, soft-capping, tied
  embeddings) but no learned meaning. It is a plumbing fixture, not a model.
* ``ensure_embedded_corpus()`` writes a JSON-lines file (``id``, ``topic``,
  ``text``) that loads with ``datasets.load_dataset("json", data_files=..., split="train")``.
  The text comes from ``generate_documents()``, a small template grammar over
  eight topics, each with its own nouns, verbs and adjectives, so the topic of
  a document is learnable from its tokens (sparse probing uses that).

Tokenizer: a word-level ``tokenizers`` model over a fixed vocabulary built from
the generator's own word lists, so generated text never yields ``<unk>``.
Special ids follow Gemma: ``<pad>``=0, ``<eos>``=1, ``<bos>``=2, ``<unk>``=3.
Like Gemma's tokenizer, ``tokenizer(text)`` prepends ``<bos>`` (a post-processor
stored in ``tokenizer.json``) and ``tokenizer(text, add_special_tokens=False)``
gives only the word ids, which is what the harvester uses before prepending
``bos_token_id`` itself. Text is lower-cased; decoding re-attaches punctuation,
so ``decode(encode(text)) == text`` for generated (lower-case) text.

Assets live under ``<home>/embedded/`` where home is ``$MTSAE_HOME`` or
``~/.cache/mtsae``. Each is built in a temporary sibling and renamed into place,
so a crash never leaves something that looks complete, and two processes racing
both end up using one intact copy. Names carry a version: change the generator,
the vocabulary or the model shape and bump it, so old assets are not reused.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from mtsae.durable import materialise_dir, materialise_file
from mtsae.home import mtsae_home

EMBEDDED_NAME = "embedded"

MODEL_DIRNAME = "tiny-gemma2-v1"
CORPUS_FILENAME = "corpus-v1.jsonl"
COMPLETE_MARKER = ".complete"

MODEL_SEED = 0
CORPUS_SEED = 0
CORPUS_DOCUMENTS = 380
# Document lengths in tokens: log-normal around a median, clipped. With these
# numbers ~15% of documents are under 128 tokens and ~18% exceed 1100.
_LENGTH_MEDIAN = 380
_LENGTH_SIGMA = 1.1
_LENGTH_MIN, _LENGTH_MAX = 16, 4096

# Temp dirs/files older than this are leftovers of a crashed build.
_STALE_TEMP_AGE_S = 3600

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma
PUNCTUATION = (".", ",", "?", "!")

# Model construction seeds torch's global RNG; serialise it within a process.
_BUILD_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# Where things live
# --------------------------------------------------------------------------


embedded_home = mtsae_home  # the embedded assets live in <home>/embedded/


def _embedded_dir(home: Path | None) -> Path:
    return Path(home if home is not None else embedded_home()) / "embedded"


# --------------------------------------------------------------------------
# Word lists and the template grammar
# --------------------------------------------------------------------------

# Each topic: nouns (singular), verbs (base form), adjectives. Plurals, third
# person and past forms follow the regular rules in _plural/_past unless listed
# in _IRREGULAR_PAST.
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "biology": {
        "nouns": (
            "cell", "gene", "protein", "enzyme", "membrane", "organism", "tissue",
            "neuron", "receptor", "mutation", "virus", "chromosome", "ribosome",
            "embryo", "hormone", "antibody", "population", "habitat", "predator",
            "seed", "genome", "lineage", "ecosystem", "parasite", "host", "nutrient",
            "microscope", "organ", "root", "spore",
        ),
        "verbs": (
            "divide", "evolve", "express", "encode", "mutate", "replicate", "digest",
            "absorb", "regulate", "inherit", "adapt", "migrate", "infect", "secrete",
            "transcribe", "reproduce", "metabolize", "survive", "grow", "feed",
        ),
        "adjectives": (
            "cellular", "genetic", "dominant", "recessive", "viral", "microbial",
            "living", "immune", "neural", "fertile", "invasive", "native",
            "symbiotic", "aerobic", "diploid", "mutant", "wild", "healthy",
        ),
    },
    "chemistry": {
        "nouns": (
            "atom", "molecule", "electron", "proton", "bond", "acid", "solvent",
            "solution", "reaction", "catalyst", "compound", "element", "isotope",
            "ion", "salt", "crystal", "flask", "beaker", "reagent", "polymer",
            "oxide", "gas", "metal", "alloy", "residue", "vapor", "titration",
            "electrode", "nitrate", "sulfate",
        ),
        "verbs": (
            "react", "dissolve", "oxidize", "reduce", "heat", "titrate", "evaporate",
            "condense", "ionize", "precipitate", "neutralize", "catalyze", "measure",
            "mix", "combine", "decompose", "crystallize", "distill", "filter", "weigh",
        ),
        "adjectives": (
            "acidic", "alkaline", "volatile", "inert", "covalent", "ionic", "molar",
            "aqueous", "reactive", "stable", "toxic", "saturated", "dilute",
            "concentrated", "metallic", "organic", "neutral", "gaseous",
        ),
    },
    "cooking": {
        "nouns": (
            "onion", "garlic", "sauce", "pan", "oven", "recipe", "flour", "butter",
            "dough", "soup", "spice", "pepper", "lemon", "knife", "bowl", "skillet",
            "broth", "noodle", "herb", "salad", "bread", "cheese", "chef", "kitchen",
            "spoon", "egg", "cake", "carrot", "vinegar", "pastry",
        ),
        "verbs": (
            "chop", "stir", "bake", "boil", "simmer", "roast", "season", "slice",
            "whisk", "knead", "fry", "grill", "peel", "taste", "serve", "melt",
            "marinate", "toast", "blend", "cook",
        ),
        "adjectives": (
            "crispy", "savory", "sweet", "spicy", "fresh", "tender", "golden",
            "creamy", "salty", "bitter", "juicy", "smoky", "fluffy", "warm", "raw",
            "delicious", "sour", "rich",
        ),
    },
    "sports": {
        "nouns": (
            "team", "player", "coach", "goal", "match", "league", "referee", "ball",
            "stadium", "striker", "keeper", "tournament", "trophy", "fan", "court",
            "racket", "runner", "medal", "score", "defense", "penalty", "captain",
            "champion", "inning", "lap", "jersey", "whistle", "helmet", "rival",
            "playoff",
        ),
        "verbs": (
            "defend", "tackle", "pass", "kick", "sprint", "train", "compete", "win",
            "lose", "dribble", "shoot", "celebrate", "qualify", "block", "cheer",
            "race", "jump", "attack", "foul", "sweat",
        ),
        "adjectives": (
            "athletic", "competitive", "undefeated", "fast", "fierce", "offensive",
            "defensive", "professional", "amateur", "olympic", "injured", "winning",
            "strong", "agile", "tired", "final", "loyal", "exhausted",
        ),
    },
    "finance": {
        "nouns": (
            "market", "stock", "investor", "bank", "loan", "dividend", "portfolio",
            "asset", "share", "fund", "price", "budget", "profit", "revenue", "debt",
            "credit", "inflation", "currency", "trader", "broker", "equity", "tax",
            "deposit", "mortgage", "economy", "account", "payment", "bond", "index",
            "merger",
        ),
        "verbs": (
            "invest", "trade", "borrow", "lend", "save", "spend", "hedge", "rally",
            "purchase", "sell", "buy", "audit", "diversify", "insure", "earn", "owe",
            "finance", "default", "refinance", "liquidate",
        ),
        "adjectives": (
            "fiscal", "bullish", "bearish", "liquid", "risky", "profitable", "annual",
            "quarterly", "monetary", "global", "wealthy", "cheap", "expensive",
            "private", "public", "volatile", "solvent", "taxable",
        ),
    },
    "music": {
        "nouns": (
            "song", "melody", "chord", "rhythm", "guitar", "piano", "violin", "drum",
            "singer", "band", "album", "concert", "note", "tempo", "harmony",
            "orchestra", "composer", "lyric", "verse", "chorus", "beat", "string",
            "scale", "symphony", "tune", "choir", "stage", "audience", "microphone",
            "track",
        ),
        "verbs": (
            "sing", "play", "compose", "strum", "perform", "record", "tune",
            "rehearse", "improvise", "harmonize", "listen", "conduct", "hum", "clap",
            "dance", "resonate", "release", "arrange", "applaud", "whistle",
        ),
        "adjectives": (
            "melodic", "acoustic", "harmonic", "loud", "quiet", "upbeat", "classical",
            "rhythmic", "lyrical", "soulful", "electric", "minor", "major", "catchy",
            "slow", "live", "sharp", "flat",
        ),
    },
    "programming": {
        "nouns": (
            "function", "variable", "compiler", "loop", "array", "pointer", "server",
            "database", "query", "bug", "module", "library", "thread", "process",
            "class", "object", "integer", "parser", "kernel", "script", "test",
            "commit", "branch", "repository", "interface", "cache", "stack",
            "request", "packet", "string",
        ),
        "verbs": (
            "compile", "debug", "execute", "refactor", "deploy", "parse", "allocate",
            "iterate", "return", "import", "install", "merge", "fork", "test",
            "render", "encrypt", "load", "call", "crash", "cache",
        ),
        "adjectives": (
            "recursive", "static", "dynamic", "virtual", "binary", "parallel",
            "asynchronous", "null", "boolean", "concurrent", "broken", "deprecated",
            "modular", "immutable", "private", "public", "fast", "global",
        ),
    },
    "weather": {
        "nouns": (
            "cloud", "rain", "storm", "wind", "snow", "thunder", "lightning",
            "temperature", "forecast", "front", "humidity", "pressure", "drizzle",
            "fog", "hail", "breeze", "sky", "season", "hurricane", "tornado",
            "blizzard", "sunshine", "frost", "flood", "drought", "rainbow", "gust",
            "climate", "barometer", "meteorologist",
        ),
        "verbs": (
            "rain", "snow", "blow", "freeze", "thaw", "pour", "drizzle", "clear",
            "darken", "cool", "flood", "gust", "shift", "swirl", "strike",
            "approach", "linger", "drift", "melt", "warm",
        ),
        "adjectives": (
            "cloudy", "rainy", "stormy", "windy", "humid", "foggy", "sunny",
            "chilly", "freezing", "tropical", "mild", "severe", "overcast", "damp",
            "icy", "calm", "gloomy", "hot",
        ),
    },
}

_IRREGULAR_PAST = {
    "grow": "grew", "feed": "fed", "win": "won", "lose": "lost", "shoot": "shot",
    "lend": "lent", "spend": "spent", "sell": "sold", "buy": "bought", "sing": "sang",
    "blow": "blew", "freeze": "froze", "strike": "struck", "chop": "chopped",
    "stir": "stirred", "strum": "strummed", "hum": "hummed", "clap": "clapped",
    "debug": "debugged",
}

# Topic-neutral fillers for the shared slots of the templates.
_SHARED = {
    "ADV": (
        "quickly", "slowly", "carefully", "often", "rarely", "usually", "always",
        "sometimes", "again", "clearly", "suddenly", "steadily", "today", "yesterday",
    ),
    "P": (
        "in", "on", "with", "near", "from", "into", "through", "under", "over",
        "after", "before", "during", "beside", "around",
    ),
    "NUM": ("two", "three", "four", "five", "six", "seven", "ten", "twelve", "twenty", "several", "many", "few"),
    "PRON": ("we", "they", "you", "i"),
}

# Sentence templates. {N} noun, {Ns} plural noun, {A} adjective, {V} verb,
# {Vs} third person, {Vd} past; {ADV} {P} {NUM} {PRON} shared fillers; {a} is
# "a" or "an" depending on the next word. Every literal word here enters the
# vocabulary automatically (see vocabulary()).
TEMPLATES: tuple[str, ...] = (
    "the {N} {Vs} the {A} {N} .",
    "the {A} {N} {Vs} {ADV} .",
    "{a} {A} {N} {Vd} {P} the {N} .",
    "{Ns} {V} {ADV} when the {N} is {A} .",
    "when the {N} {Vs} , the {Ns} {V} {P} the {A} {N} .",
    "{PRON} {Vd} the {N} and the {N} {Vd} {ADV} .",
    "does the {N} {V} the {N} ?",
    "why did the {A} {N} {V} {P} the {Ns} ?",
    "{NUM} {A} {Ns} {Vd} {P} the {N} .",
    "the {N} was {A} , but the {Ns} were {A} .",
    "{PRON} think that the {N} will {V} the {N} .",
    "if the {N} {Vs} , then the {N} should {V} .",
    "most {Ns} {V} {ADV} , although some {Ns} {V} {P} {a} {A} {N} .",
    "what {a} {A} {N} !",
    "the {N} of the {N} is {A} and {A} .",
    "every {N} {Vs} {P} {a} {N} , so the {Ns} are {A} .",
    "after the {N} {Vd} , {PRON} {Vd} the {Ns} {ADV} .",
    "there are {NUM} {Ns} {P} the {A} {N} .",
    "can the {Ns} {V} without the {N} ?",
    "the {N} is very {A} !",
    "this {N} has {a} {A} {N} , and that {N} has {NUM} {Ns} .",
    "nobody expected the {N} to {V} so {ADV} .",
    "how often do {Ns} {V} {P} {a} {A} {N} ?",
    "because the {Ns} were {A} , the {N} {Vd} the {N} .",
)

_SLOT = re.compile(r"\{(\w+)\}")
_CONSONANT_Y = re.compile(r"[^aeiou]y$")


def _plural(word: str) -> str:
    """Regular English plural / third person singular."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if _CONSONANT_Y.search(word):
        return word[:-1] + "ies"
    return word + "s"


def _past(verb: str) -> str:
    """Regular past tense, with the few irregular verbs listed explicitly."""
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if _CONSONANT_Y.search(verb):
        return verb[:-1] + "ied"
    return verb + "ed"


def _topic_slots(words: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """All inflected forms a topic offers, keyed by template slot."""
    verbs = words["verbs"]
    return {
        "N": words["nouns"],
        "Ns": tuple(_plural(n) for n in words["nouns"]),
        "A": words["adjectives"],
        "V": verbs,
        "Vs": tuple(_plural(v) for v in verbs),
        "Vd": tuple(_past(v) for v in verbs),
    }


def _template_literals() -> set[str]:
    literals = set()
    for template in TEMPLATES:
        literals.update(tok for tok in template.split() if not _SLOT.fullmatch(tok))
    return literals - set(PUNCTUATION)


def vocabulary() -> list[str]:
    """The tokenizer's fixed vocabulary, in id order.

    Specials first (Gemma's ids), then punctuation, then every word the
    generator can emit, sorted, so ids never depend on set/dict ordering.
    """
    words = set(_template_literals()) | {"a", "an"}
    for fillers in _SHARED.values():
        words.update(fillers)
    for topic_words in TOPICS.values():
        for forms in _topic_slots(topic_words).values():
            words.update(forms)
    return [*SPECIAL_TOKENS, *PUNCTUATION, *sorted(words)]


# --------------------------------------------------------------------------
# Corpus generator
# --------------------------------------------------------------------------


def _sentence(rng: random.Random, slots: dict[str, tuple[str, ...]]) -> list[str]:
    """One sentence as a token list (words and punctuation marks)."""
    tokens = []
    for piece in rng.choice(TEMPLATES).split():
        slot = _SLOT.fullmatch(piece)
        if slot is None:
            tokens.append(piece)
        elif slot.group(1) == "a":
            tokens.append("{a}")  # resolved once the next word is known
        else:
            tokens.append(rng.choice(slots[slot.group(1)]))
    for i, tok in enumerate(tokens):
        if tok == "{a}":
            tokens[i] = "an" if tokens[i + 1][0] in "aeiou" else "a"
    return tokens


def _detokenize(tokens: list[str]) -> str:
    """Join tokens with spaces, attaching punctuation to the preceding word."""
    words: list[str] = []
    for tok in tokens:
        if tok in PUNCTUATION and words:
            words[-1] += tok
        else:
            words.append(tok)
    return " ".join(words)


def _target_length(rng: random.Random) -> int:
    length = rng.lognormvariate(math.log(_LENGTH_MEDIAN), _LENGTH_SIGMA)
    return int(min(max(length, _LENGTH_MIN), _LENGTH_MAX))


def generate_documents(seed: int = 0, n_documents: int = CORPUS_DOCUMENTS) -> Iterator[dict]:
    """Yield ``{"id", "topic", "text"}`` documents; pure and deterministic in ``seed``.

    Each document picks a topic, a log-normal target length in tokens, and
    appends template sentences filled from that topic's words until it reaches
    the target. Uses its own ``random.Random``; the global RNG is untouched.
    """
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    slots = {name: {**_topic_slots(TOPICS[name]), **_SHARED} for name in topics}
    for doc_id in range(n_documents):
        topic = rng.choice(topics)
        target = _target_length(rng)
        tokens: list[str] = []
        while len(tokens) < target:
            tokens.extend(_sentence(rng, slots[topic]))
        yield {"id": doc_id, "topic": topic, "text": _detokenize(tokens)}


# --------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------


def build_tokenizer(words: list[str] | None = None):
    """A ``PreTrainedTokenizerFast`` (word-level) over ``vocabulary()``, or over ``words`` (ids in list order)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(words if words is not None else vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    # Whitespace first, then every punctuation mark becomes its own token.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    # WordPiece's decoder joins with spaces and then removes the space before
    # . , ? ! ; no token starts with its "##" prefix, so nothing else changes.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # Installs a "<bos> $A" post-processor, saved in tokenizer.json.
        add_bos_token=True,
        add_eos_token=False,
    )


def _model_config(vocab_size: int):
    from transformers import Gemma2Config

    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=26,  # as gemma-2-2b; layer_types keeps its default alternation
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=128,  # < max context, so sliding and full layers really differ
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        # Short, so the default harvest context (min(1024, this)) keeps eager attention,
        # quadratic in context, fast on a 2-core CPU.
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        dtype="float32",
    )
    config.architectures = ["Gemma2ForCausalLM"]
    return config


_MODEL_CARD = """\
# {name}: embedded default model of mtsae

Real `Gemma2ForCausalLM` architecture (26 layers, hidden size 64) with
**random, seeded weights** (seed {seed}) and a word-level tokenizer over the
vocabulary of mtsae's synthetic corpus. For testing the pipeline offline; it
has learned nothing. Generated by `mtsae.harvest.embedded`.
"""


def _write_model(directory: Path) -> None:
    import torch
    from transformers import Gemma2ForCausalLM

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    config = _model_config(vocab_size=len(tokenizer))
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        model = Gemma2ForCausalLM(config)
    model.to(torch.float32).save_pretrained(directory)
    if not (directory / "config.json").is_file():  # save_pretrained skips non-zero ranks of a process group
        raise RuntimeError(f"save_pretrained wrote no config.json into {directory}; build the embedded model "
                           "before torch.distributed is initialised")
    (directory / "README.md").write_text(_MODEL_CARD.format(name=MODEL_DIRNAME, seed=MODEL_SEED))


def _write_corpus(path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for doc in generate_documents(CORPUS_SEED):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------
# Atomic materialisation
# --------------------------------------------------------------------------


def _is_complete_dir(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def _materialise_dir(final: Path, build: Callable[[Path], None]) -> Path:
    def build_complete(directory: Path) -> None:
        build(directory)
        (directory / COMPLETE_MARKER).write_text(final.name + "\n")

    return materialise_dir(final, build_complete, complete=_is_complete_dir, stale_after_s=_STALE_TEMP_AGE_S)


def ensure_embedded_model(home: Path | None = None) -> Path:
    """Materialise (once) and return the embedded model's HF directory."""
    return _materialise_dir(_embedded_dir(home) / MODEL_DIRNAME, _write_model)


def ensure_embedded_corpus(home: Path | None = None) -> Path:
    """Materialise (once) and return the embedded corpus's JSONL path."""
    return materialise_file(_embedded_dir(home) / CORPUS_FILENAME, _write_corpus, stale_after_s=_STALE_TEMP_AGE_S)
