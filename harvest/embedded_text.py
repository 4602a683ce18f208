"""The embedded corpus's text: eight topics' word lists, the sentence templates, the vocabulary, the generator.

The words and templates are data; the rules that fill templates, inflect words
and join tokens are harvest/grammar.py. harvest/embedded.py materialises the
corpus and a tokenizer over :func:`vocabulary` on disk. Change anything here and
the corpus bytes change: bump the names in embedded.py (CORPUS_FILENAME, MODEL_DIRNAME).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from mtsae.harvest.grammar import PUNCTUATION, detokenize, fill, inflected_slots, template_literals

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma

CORPUS_DOCUMENTS = 380
# Document lengths in tokens: log-normal around a median, clipped. With these
# numbers ~15% of documents are under 128 tokens and ~18% exceed 1100.
_LENGTH_MEDIAN = 380
_LENGTH_SIGMA = 1.1
_LENGTH_MIN, _LENGTH_MAX = 16, 4096

# Each topic: nouns (singular), verbs (base form), adjectives. Plurals, third
# person and past forms follow the rules of grammar.py (plural, past, IRREGULAR_PAST).
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


def vocabulary() -> list[str]:
    """The tokenizer's fixed vocabulary, in id order.

    Specials first (Gemma's ids), then punctuation, then every word the
    generator can emit, sorted, so ids never depend on set/dict ordering.
    """
    words = set(template_literals(TEMPLATES)) | {"a", "an"}
    for fillers in _SHARED.values():
        words.update(fillers)
    for topic_words in TOPICS.values():
        for forms in inflected_slots(topic_words).values():
            words.update(forms)
    return [*SPECIAL_TOKENS, *PUNCTUATION, *sorted(words)]


def _sentence(rng: random.Random, slots: dict[str, tuple[str, ...]]) -> list[str]:
    """One sentence as a token list (words and punctuation marks): a random template, filled from ``slots``."""
    return fill(rng.choice(TEMPLATES), rng, slots)


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
    slots = {name: {**inflected_slots(TOPICS[name]), **_SHARED} for name in topics}
    for doc_id in range(n_documents):
        topic = rng.choice(topics)
        target = _target_length(rng)
        tokens: list[str] = []
        while len(tokens) < target:
            tokens.extend(_sentence(rng, slots[topic]))
        yield {"id": doc_id, "topic": topic, "text": detokenize(tokens)}

