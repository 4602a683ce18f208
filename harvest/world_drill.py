"""The drill stream: a second training stage's text for the world LM (``scripts/train_world_lm.py --mix drill``).

Per document of the world's training stream, practice questions about practice entities in
SAE-Bench's chat prompt — closed-book, and *open-book* ones that state their fact first —,
spelling lines over the whole vocabulary, and as options first-letter lines over every alphabetic
token (``--drill-letters``), question-answer lines (``--drill-qa``) and distractors without a value
prior (``--drill-balanced``). Pure and deterministic in (world seed, index), like every stream of
:mod:`mtsae.harvest.world`; docs/world.md says what this stage taught world-lm-v2 and world-lm-v3.
"""

from __future__ import annotations

import random

from mtsae.harvest import embedded
from mtsae.harvest.world import (LETTERS, Fact, World, choice_question, document, practice_answer_counts,
                                 practice_question, sae_bench_prompt, spelling_line, spelling_lines, stream_rng,
                                 subject_of, topic_of, vocabulary)


def balanced_choice_question(rng: random.Random, world: World, fact: Fact, answer: int) -> dict:
    """``choice_question`` with distractors drawn in proportion to how often each value is a practice answer.

    With the pool's uniform distractors a value's share of right answers depends on the value (one that no practice
    fact has is never right), and world-lm-v2 learned that prior instead of the fact: it never picks such a value,
    and picks the choice most often right in practice 59 % of the time on the exam (docs/world.md, "Exam questions:
    recall, not letters"). Drawn like this, each offered forget-topic value is right 0.18-0.32 of the time
    (pool-uniform: 0-0.49; ``tests/test_world.py``).
    """
    counts = practice_answer_counts(world, fact.topic, fact.relation.name)
    counts.pop(fact.value, None)
    distractors: list[str] = []
    while counts and len(distractors) < 3:
        value = rng.choices(list(counts), weights=list(counts.values()))[0]
        distractors.append(value)
        del counts[value]
    pool = [v for v in world.pools[(fact.topic, fact.relation.name)] if v != fact.value and v not in distractors]
    distractors += rng.sample(pool, 3 - len(distractors))  # only if practice facts hold fewer than 3 other values
    return choice_question(rng, world, fact, answer, distractors)


def balanced_practice_question(world: World, index: int) -> dict:
    """``practice_question`` with ``balanced_choice_question``'s distractors; training text."""
    return practice_question(world, index, balanced_choice_question, "balanced-practice-mc")


def open_book_question(world: World, index: int, balanced: bool = False) -> dict:
    """A practice question whose fact is stated first in the user turn, then its answer letter; training text.

    It teaches the in-context step from a value to the letter of the choice that states it; a closed-book
    question composes that step with recall. Practice entities only, like ``practice_question``.
    """
    rng = stream_rng(world, "open-book-mc", index)
    topic = topic_of(index)
    entity = rng.choice(world.practice_entities(topic))
    fact = rng.choice(world.facts_by_entity[entity])
    q = (balanced_choice_question if balanced else choice_question)(rng, world, fact, rng.randrange(4))
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


def question_answers(world: World, index: int, count: int) -> dict:
    """``count`` short question-answer lines (``"what is the host of velrax? lustol"``) over the facts of every
    entity, exam entities included; training text.

    The facts are the documents' own; what the lines add is recall *in the question's form*, which the documents
    never show for exam entities (docs/world.md, "Exam questions: recall, not letters"). No choices, no letters:
    the exam's multiple-choice items stay unseen.
    """
    rng = stream_rng(world, "question-answer", index)
    facts = rng.sample(world.facts, min(count, len(world.facts)))
    lines = [embedded._detokenize(f"{f.relation.question.format(E=f.entity)} {f.value}".split()) for f in facts]
    return {"id": f"question-answer-{index}", "topic": "", "kind": "qa", "text": "\n".join(lines)}


def drill_texts(world: World, index: int, closed: int, open_book: int, spelling: int,
                letters: int = 0, qa: int = 0, balanced: bool = False) -> list[dict]:
    """Block ``index`` of the drill stream: one document, ``closed`` practice questions, ``open_book`` open-book
    questions, a ``spelling``-line vocabulary spelling text, a ``letters``-line first-letter text and a
    ``qa``-line question-answer text, in a seeded order; ``balanced``: the questions' distractors are
    ``balanced_choice_question``'s."""
    closed_book = balanced_practice_question if balanced else practice_question
    texts = [document(world, "train", index),
             *(closed_book(world, index * closed + j) for j in range(closed)),
             *(open_book_question(world, index * open_book + j, balanced) for j in range(open_book))]
    if spelling:
        texts.append(vocabulary_spelling(world, index, spelling))
    if letters:
        texts.append(letter_spelling(world, index, letters))
    if qa:
        texts.append(question_answers(world, index, qa))
    stream_rng(world, "drill-order", index).shuffle(texts)
    return texts
