"""The template grammar of mtsae's synthetic text: one implementation for every generator.

A template is a sentence of space-separated pieces: literal words and
punctuation marks, or ``{SLOT}`` placeholders filled by a random choice from the
pool of that name. ``{a}`` is the article, "a" or "an" depending on the next
word. The embedded corpus (harvest/embedded_text.py), the trained world
(harvest/world.py) and the eval mirrors' text (evaluate/synthetic.py) all fill
their templates here and join the tokens with :func:`detokenize`, so their
text follows one set of rules; only the word lists and templates differ.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping

PUNCTUATION = (".", ",", "?", "!")

# Past tenses the regular rules in past() would get wrong, for the verbs of the word lists.
IRREGULAR_PAST = {
    "grow": "grew", "feed": "fed", "win": "won", "lose": "lost", "shoot": "shot",
    "lend": "lent", "spend": "spent", "sell": "sold", "buy": "bought", "sing": "sang",
    "blow": "blew", "freeze": "froze", "strike": "struck", "chop": "chopped",
    "stir": "stirred", "strum": "strummed", "hum": "hummed", "clap": "clapped",
    "debug": "debugged",
}

SLOT = re.compile(r"\{(\w+)\}")
_CONSONANT_Y = re.compile(r"[^aeiou]y$")


def plural(word: str) -> str:
    """Regular English plural / third person singular."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if _CONSONANT_Y.search(word):
        return word[:-1] + "ies"
    return word + "s"


def past(verb: str) -> str:
    """Regular past tense, with the few irregular verbs listed explicitly."""
    if verb in IRREGULAR_PAST:
        return IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if _CONSONANT_Y.search(verb):
        return verb[:-1] + "ied"
    return verb + "ed"


def inflected_slots(words: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """All inflected forms a topic's ``nouns``/``verbs``/``adjectives`` offer, keyed by template slot:
    {N} noun, {Ns} plural noun, {A} adjective, {V} verb, {Vs} third person, {Vd} past."""
    verbs = words["verbs"]
    return {
        "N": words["nouns"],
        "Ns": tuple(plural(n) for n in words["nouns"]),
        "A": words["adjectives"],
        "V": verbs,
        "Vs": tuple(plural(v) for v in verbs),
        "Vd": tuple(past(v) for v in verbs),
    }


def template_literals(templates: Iterable[str]) -> set[str]:
    """The words templates contain outside their slots (punctuation excluded): vocabulary they always need."""
    literals = set()
    for template in templates:
        literals.update(tok for tok in template.split() if not SLOT.fullmatch(tok))
    return literals - set(PUNCTUATION)


def fill(template: str, rng: random.Random, pools: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One filled template as a token list (words and punctuation marks), one ``rng.choice`` per slot in order."""
    tokens = []
    for piece in template.split():
        slot = SLOT.fullmatch(piece)
        if slot is None:
            tokens.append(piece)
        elif slot.group(1) == "a":
            tokens.append("{a}")  # resolved once the next word is known
        else:
            tokens.append(rng.choice(pools[slot.group(1)]))
    for i, tok in enumerate(tokens):
        if tok == "{a}":
            tokens[i] = "an" if tokens[i + 1][0] in "aeiou" else "a"
    return tokens


def detokenize(tokens: list[str]) -> str:
    """Join tokens with spaces, attaching punctuation to the preceding word."""
    words: list[str] = []
    for tok in tokens:
        if tok in PUNCTUATION and words:
            words[-1] += tok
        else:
            words.append(tok)
    return " ".join(words)
