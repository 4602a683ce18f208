"""Synthetic text in the embedded model's vocabulary, for the SAE-Bench dataset mirrors.

Every word comes from :data:`mtsae.harvest.embedded_text.TOPICS` or from the small
filler lists below (all in the embedded vocabulary, checked by the tests), so
the tiny model's tokenizer never yields ``<unk>`` on mirror text. Templates are
filled and joined by the corpus's own grammar (harvest/grammar.py). A class of a
mirrored dataset (a profession, a news label, a "language"…) is a topic, which
makes it learnable from the tokens, as sparse probing needs.
"""

from __future__ import annotations

import random

from mtsae.harvest.embedded_text import TOPICS
from mtsae.harvest.grammar import detokenize, fill

TOPIC_NAMES = tuple(sorted(TOPICS))
ADVERBS = ("quickly", "slowly", "often", "rarely", "usually", "always", "sometimes", "again", "clearly",
           "today", "yesterday", "carefully", "steadily", "suddenly")
PREPOSITIONS = ("in", "on", "with", "near", "from", "into", "through", "under", "over", "after", "before")
PRONOUNS = ("we", "they", "you", "i")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "ten", "twelve", "twenty", "several", "many", "few")
POSITIVE = ("fresh", "delicious", "healthy", "stable", "profitable", "catchy", "fast", "strong", "warm",
            "calm", "sunny", "golden", "tender", "fluffy", "loyal", "winning", "rich", "agile")
NEGATIVE = ("broken", "toxic", "bitter", "risky", "injured", "tired", "exhausted", "gloomy", "severe",
            "sour", "raw", "deprecated", "invasive", "stormy", "icy", "flat", "expensive", "null")

SENTENCES = (
    "the {A} {N} can {V} the {N} .",
    "the {N} is {A} and the {N} is {A} .",
    "{PRON} {V} the {A} {N} {P} the {N} {ADV} .",
    "does the {N} {V} the {N} ?",
    "the {N} of the {N} is very {A} !",
    "this {N} has the {A} {N} .",
    "when the {N} is {A} , {PRON} {V} the {N} .",
    "every {N} should {V} {ADV} .",
    "{PRON} think that the {N} will {V} the {A} {N} .",
    "there are {NUM} {N} {P} the {A} {N} .",
)
QUESTIONS = (
    "what does the {A} {N} {V} {P} the {N} ?",
    "what can the {N} {V} when the {N} is {A} ?",
    "how often do {PRON} {V} the {A} {N} ?",
    "why does the {N} {V} the {N} ?",
)


class TextMaker:
    """Deterministic generator of sentences, texts and questions about a topic."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def _fill(self, template: str, topic: str, adjectives: tuple[str, ...] | None) -> list[str]:
        words = TOPICS[topic]
        pools = {
            "N": words["nouns"], "V": words["verbs"], "A": adjectives or words["adjectives"], "ADV": ADVERBS,
            "P": PREPOSITIONS, "PRON": PRONOUNS, "NUM": NUMBERS,
        }
        return fill(template, self.rng, pools)

    def sentence(self, topic: str, adjectives: tuple[str, ...] | None = None) -> list[str]:
        return self._fill(self.rng.choice(SENTENCES), topic, adjectives)

    def text(self, topic: str, min_words: int, adjectives: tuple[str, ...] | None = None,
             opening: tuple[str, ...] = ()) -> str:
        """Sentences about ``topic`` until at least ``min_words`` tokens (punctuation included)."""
        tokens = list(opening)
        while len(tokens) < min_words:
            tokens.extend(self.sentence(topic, adjectives))
        return detokenize(tokens)

    def question(self, topic: str) -> str:
        return detokenize(self._fill(self.rng.choice(QUESTIONS), topic, None))

    def choices(self, topic: str, k: int = 4) -> list[str]:
        """``k`` distinct short answers (an adjective and a noun of the topic), in generation order."""
        picked: dict[str, None] = {}  # ordered: a set's order would depend on the process's hash seed
        while len(picked) < k:
            picked[f"the {self.rng.choice(TOPICS[topic]['adjectives'])} {self.rng.choice(TOPICS[topic]['nouns'])}"] = None
        return list(picked)

