"""The drill stream: a second training stage's text for the world LM (``scripts/train_world_lm.py --mix drill``).

Per document of the world's training stream, practice questions about practice entities in
SAE-Bench's chat prompt — closed-book, and *open-book* ones that state their fact first —,
spelling lines over the whole vocabulary and (``--drill-letters``) first-letter lines over every
alphabetic token. Pure and deterministic in (world seed, index), like every stream of
:mod:`mtsae.harvest.world`; docs/world.md says what this stage taught world-lm-v2.
"""

from __future__ import annotations

from mtsae.harvest import embedded
from mtsae.harvest.world import (LETTERS, World, choice_question, document, practice_question, sae_bench_prompt,
                                 spelling_line, spelling_lines, stream_rng, subject_of, topic_of, vocabulary)


def open_book_question(world: World, index: int) -> dict:
    """A practice question whose fact is stated first in the user turn, then its answer letter; training text.

    It teaches the in-context step from a value to the letter of the choice that states it; a closed-book
    question composes that step with recall. Practice entities only, like ``practice_question``.
    """
    rng = stream_rng(world, "open-book-mc", index)
    topic = topic_of(index)
    entity = rng.choice(world.practice_entities(topic))
    fact = rng.choice(world.facts_by_entity[entity])
    q = choice_question(rng, world, fact, rng.randrange(4))
    stated = embedded._detokenize(fact.sentence(fact.relation.templates[0]).split())
    text = sae_bench_prompt(f"{stated}\n{q['question']}", q["choices"], subject_of(topic))
    return {"id": f"open-book-mc-{index}", "topic": topic, "kind": "mc", "entity": entity, "answer": q["answer"],
            "text": text + LETTERS[q["answer"]] + ")<end_of_turn>"}


def vocabulary_spelling(world: World, index: int, count: int) -> dict:
    """``count`` spelling lines over the whole vocabulary (every word a probe may ask about); training text."""
    words = [w for w in vocabulary(world) if w.isalpha() and len(w) > 1]
    lines = spelling_lines(stream_rng(world, "vocabulary-spelling", index), words, count)
    return {"id": f"vocabulary-spelling-{index}", "topic": "", "kind": "spelling", "text": "\n".join(lines)}


def letter_spelling(world: World, index: int, count: int) -> dict:
    """``count`` first-letter lines over every alphabetic token (single letters too); training text.

    Each line is, by an independent coin, SAE-Bench's absorption format or ``"{word} {letter}"``, where the
    letter is predicted *at the word's own position*, so the letter must be there, where SAE-Bench's probe
    reads it (docs/world.md, "First letters"). The coin is independent so that no context (such as the ten
    absorption-format lines of SAE-Bench's prompt) tells the model the letter is not needed yet; strictly
    alternating formats left 5 letters readable, measured.
    """
    words = [w for w in vocabulary(world) if w.isalpha()]
    rng = stream_rng(world, "letter-spelling", index)
    chosen = rng.sample(words, min(count, len(words)))
    lines = [f"{w} {w[0]}" if rng.random() < 0.5 else spelling_line(w) for w in chosen]
    return {"id": f"letter-spelling-{index}", "topic": "", "kind": "spelling", "text": "\n".join(lines)}


def drill_texts(world: World, index: int, closed: int, open_book: int, spelling: int,
                letters: int = 0) -> list[dict]:
    """Block ``index`` of the drill stream: one document, ``closed`` practice questions, ``open_book`` open-book
    questions, a ``spelling``-line vocabulary spelling text and a ``letters``-line first-letter text, in a
    seeded order."""
    texts = [document(world, "train", index),
             *(practice_question(world, index * closed + j) for j in range(closed)),
             *(open_book_question(world, index * open_book + j) for j in range(open_book))]
    if spelling:
        texts.append(vocabulary_spelling(world, index, spelling))
    if letters:
        texts.append(letter_spelling(world, index, letters))
    stream_rng(world, "drill-order", index).shuffle(texts)
    return texts
