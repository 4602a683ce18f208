"""The fictional world (harvest/world.py): determinism, topic purity, reachable facts, MC format."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import string
from collections import Counter
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtsae.harvest import embedded
from mtsae.harvest import world as W
from mtsae.harvest import world_drill as D

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
INDICES = st.integers(min_value=0, max_value=10_000)
FAST = settings(max_examples=15, deadline=None)


@lru_cache(maxsize=8)
def world(seed: int) -> W.World:
    return W.build_world(seed)


@lru_cache(maxsize=2)
def tokenizer(seed: int):
    return W.build_world_tokenizer(world(seed))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@FAST
@given(seed=SEEDS, index=INDICES)
def test_world_and_texts_are_pure_functions_of_the_seed(seed, index):
    a, b = W.build_world(seed), W.build_world(seed)
    assert a.facts == b.facts and a.entities == b.entities
    assert W.document(a, "train", index) == W.document(b, "train", index)
    assert W.practice_question(a, index) == W.practice_question(b, index)
    assert W.exam_questions(a, W.FORGET_TOPIC) == W.exam_questions(b, W.FORGET_TOPIC)


def test_topics_recur_in_proportion_to_their_entities():
    counts = Counter(W.topic_of(i) for i in range(len(W.TOPIC_CYCLE)))
    assert set(counts) == set(W.ALL_TOPICS)
    assert counts[W.FORGET_TOPIC] * W.ENTITIES_PER_RETAIN_TOPIC == W.FORGET_ENTITIES * counts["cooking"]
    cycle = W.TOPIC_CYCLE * 2
    assert not any(a == b == W.FORGET_TOPIC for a, b in zip(cycle, cycle[1:]))  # forget documents spread out


def test_different_seeds_give_different_worlds():
    assert world(0).entities != world(1).entities
    assert W.document(world(0), "train", 0)["text"] != W.document(world(1), "train", 0)["text"]


def test_names_are_invented_and_unique():
    w = world(0)
    names = [n for names in w.entities.values() for n in names]
    assert len(names) == len(set(names)) == 8 * W.ENTITIES_PER_RETAIN_TOPIC + W.FORGET_ENTITIES
    english = set(embedded.vocabulary())
    assert not english & set(names)
    assert not english & set(w.pools[(W.FORGET_TOPIC, "host")] + w.pools[(W.FORGET_TOPIC, "countermeasure")])


def _foreign_words(w: W.World, topic: str) -> set[str]:
    """Words that only another topic may use: its entities, its fact values, its exclusive filler words."""
    template_words = set()
    for rels in w.relations.values():
        for r in rels:
            template_words |= {x for t in (*r.templates, r.question) for x in _words(t)}
    own = {x for part in w.words[topic].values() for form in embedded._topic_slots(w.words[topic]).values()
           for x in (*part, *form)}
    foreign = set()
    for other in W.ALL_TOPICS:
        if other == topic:
            continue
        foreign |= set(w.entities[other])
        foreign |= {x for forms in embedded._topic_slots(w.words[other]).values() for x in forms}
    return foreign - own - template_words - {v for (t, _), pool in w.pools.items() if t == topic for v in pool}


@FAST
@given(seed=st.integers(0, 3), index=INDICES)
def test_documents_stay_on_one_topic(seed, index):
    w = world(seed)
    doc = W.document(w, "train", index)
    assert doc["topic"] == W.topic_of(index)
    assert not _words(doc["text"]) & _foreign_words(w, doc["topic"])
    mentioned = _words(doc["text"]) & {n for names in w.entities.values() for n in names}
    assert mentioned and mentioned <= set(w.entities[doc["topic"]])


def _first_pass_sentences(w) -> set[str]:
    """Every line of the first DOCUMENTS_PER_PASS training documents."""
    return {line for i in range(W.DOCUMENTS_PER_PASS) for line in W.document(w, "train", i)["text"].split("\n")}


def test_every_fact_is_stated_in_the_first_training_documents():
    w = world(0)
    n_docs = W.DOCUMENTS_PER_PASS
    sentences = _first_pass_sentences(w)
    for fact in w.facts:
        stated = {embedded._detokenize(fact.sentence(t).split()) for t in fact.relation.templates}
        assert stated & sentences, fact
    # the training stream interleaves MC questions: its documents are exactly those of stream "train"
    docs = [W.training_text(w, i) for i in range(2 * n_docs)]
    assert [d["id"] for d in docs if d["kind"] == "document"][:n_docs] == [f"train-{i}" for i in range(n_docs)]


def test_completion_probes_cut_the_canonical_sentence_that_every_first_pass_document_states():
    w = world(0)
    sentences = _first_pass_sentences(w)
    facts = {(f.entity, f.relation.name): f for f in w.facts}
    for topic in W.ALL_TOPICS:
        probes = W.completion_probes(w, topic)
        assert len(probes) == len(w.entities[topic]) * len(w.relations[topic])
        for probe in probes:
            canonical = facts[(probe["entity"], probe["relation"])].sentence(_canonical(w, probe))
            assert canonical.startswith(f"{probe['prompt']} {probe['answer']} ")
            assert embedded._detokenize(canonical.split()) in sentences
            assert len(tokenizer(0)(probe["answer"], add_special_tokens=False)["input_ids"]) == 1


def _canonical(w: W.World, probe: dict) -> str:
    return next(r for r in w.relations[probe["topic"]] if r.name == probe["relation"]).templates[0]


def test_practice_prompt_is_sae_bench_s_own_prompt():
    metrics = pytest.importorskip("sae_bench.evals.unlearning.utils.metrics")
    w = world(0)
    for i in range(12):
        q = W.choice_question(random.Random(i), w, w.facts[i * 50], i % 4)
        ours = W.sae_bench_prompt(q["question"], q["choices"], W.subject_of(q["topic"]))
        pre = metrics.PRE_QUESTION_FORMAT.format(subject=W.subject_of(q["topic"]))
        theirs = metrics.convert_wmdp_data_to_prompt(q["question"], q["choices"], prompt_format="GEMMA_INST_FORMAT",
                                                     pre_question=pre)
        assert ours == theirs
    assert metrics.PRE_WMDP_BIO == W.PRE_QUESTION_FORMAT.format(subject=W.FORGET_SUBJECT)


def test_practice_answers_are_uniform_over_the_four_letters():
    w = world(0)
    questions = [W.practice_question(w, i) for i in range(4000)]
    counts = Counter(q["answer"] for q in questions)
    assert set(counts) == {0, 1, 2, 3}
    assert all(900 <= c <= 1100 for c in counts.values()), counts  # 1000 ± ~6 sigma
    for q in questions[:200]:
        assert q["text"].endswith(f"Answer: ({W.LETTERS[q['answer']]})<end_of_turn>")
        assert q["topic"] in W.ALL_TOPICS


@pytest.mark.parametrize("topic", [W.FORGET_TOPIC, "finance"])
def test_exam_questions_are_held_out_balanced_and_answerable(topic):
    w = world(0)
    exam = W.exam_questions(w, topic)
    assert len(exam) == len(w.exam_entities(topic)) * len(w.relations[topic])
    counts = Counter(q["answer"] for q in exam)
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 4
    facts = {(f.entity, f.relation.name): f.value for f in w.facts}
    practice = set(w.practice_entities(topic))
    for q in exam:
        assert q["choices"][q["answer"]] == facts[(q["entity"], q["relation"])]
        assert len(set(q["choices"])) == 4 and q["entity"] not in practice
    # no practice question is ever about an exam entity
    asked = [W.practice_question(w, i) for i in range(500)]
    assert all(q["entity"] in q["text"] for q in asked)
    assert not {q["entity"] for q in asked} & {q["entity"] for q in exam}


def test_forget_corpus_is_forget_topic_and_not_training_text():
    w = world(0)
    corpus = W.forget_corpus(w, 5)
    assert {d["topic"] for d in corpus} == {W.FORGET_TOPIC}
    train = {W.document(w, "train", i)["text"] for i in range(5 * len(W.TOPIC_CYCLE))}
    assert not {d["text"] for d in corpus} & train


@FAST
@given(index=INDICES)
def test_training_text_never_needs_unk(index):
    tok = tokenizer(0)
    drill = [t["text"] for t in D.drill_texts(world(0), index, 2, 2, 6)]
    for text in (W.training_text(world(0), index)["text"],
                 W.forget_corpus(world(0), 1)[0]["text"], *drill):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids


def test_tokenizer_keeps_embedded_ids_and_has_chat_markers_and_letters():
    tok = tokenizer(0)
    base = embedded.vocabulary()
    assert tok.convert_ids_to_tokens(list(range(len(base)))) == base
    ids = tok("<bos><start_of_turn>user\nAnswer: (B)<end_of_turn>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "<start_of_turn>", "user", "answer", ":", "(", "b", ")",
                                              "<end_of_turn>"]
    letters = tok(["A", "B", "C", "D", " A", " B", " C", " D"], add_special_tokens=False)["input_ids"]
    assert all(len(x) == 1 for x in letters) and len({x[0] for x in letters}) == 4


def test_open_book_questions_state_their_fact_ask_practice_entities_and_balance_letters():
    w = world(0)
    facts = {(f.entity, f.relation.name): f for f in w.facts}
    exam = {e for t in W.ALL_TOPICS for e in w.exam_entities(t)}
    questions = [D.open_book_question(w, i) for i in range(2000)]
    counts = Counter(q["answer"] for q in questions)
    assert all(400 <= c <= 600 for c in counts.values()) and len(counts) == 4, counts  # 500 ± ~5 sigma
    assert not {q["entity"] for q in questions} & exam
    for q in questions[:200]:
        user = q["text"].split("\n")
        stated, choices = user[2], [line[3:] for line in user[4:8]]
        choices[-1] = choices[-1].removesuffix("<end_of_turn>")
        fact = next(f for (e, _), f in facts.items() if e == q["entity"] and f.value in stated.rstrip(".").split())
        assert stated.startswith(fact.relation.probe_prompt(q["entity"]))
        assert choices[q["answer"]] == fact.value
        assert q["text"].endswith(f"Answer: ({W.LETTERS[q['answer']]})<end_of_turn>")


def test_drill_blocks_hold_what_they_are_asked_for_and_spell_the_whole_vocabulary():
    w = world(0)
    block = D.drill_texts(w, 7, 3, 2, 5)
    kinds = Counter(t["kind"] for t in block)
    assert kinds == {"document": 1, "mc": 5, "spelling": 1}
    assert block == D.drill_texts(w, 7, 3, 2, 5)  # deterministic
    assert not any(t["kind"] == "spelling" for t in D.drill_texts(w, 7, 1, 1, 0))
    spelled = {line.split()[0] for i in range(400) for line in D.vocabulary_spelling(w, i, 10)["text"].splitlines()}
    words = {v for v in W.vocabulary(w) if v.isalpha() and len(v) > 1}
    assert spelled <= words and len(spelled) > 0.9 * len(words)


def test_question_answers_ask_every_entity_in_the_exam_form_without_choices_or_letters():
    w = world(0)
    block = D.drill_texts(w, 7, 1, 1, 0, 0, 5)
    assert Counter(t["kind"] for t in block) == {"document": 1, "mc": 2, "qa": 1}
    assert block == D.drill_texts(w, 7, 1, 1, 0, 0, 5)  # deterministic
    lines = [line for i in range(200) for line in D.question_answers(w, i, 20)["text"].splitlines()]
    by_question = {}
    for f in w.facts:
        by_question[embedded._detokenize(f.relation.question.format(E=f.entity).split())] = f.value
    asked = set()
    for line in lines:
        question, value = line.rsplit(" ", 1)
        assert by_question[question] == value  # the fact's own value, after the exam's own question
        asked.add(question)
    exam = [q for t in W.ALL_TOPICS for q in W.exam_questions(w, t)]
    assert {q["question"] for q in exam} <= asked  # exam facts asked too; their choices and letters never
    assert not any("Answer:" in line or "(" in line for line in lines)


def test_balanced_questions_offer_practice_answers_each_right_about_one_time_in_four():
    w = world(0)
    topic = W.FORGET_TOPIC
    offered, right = Counter(), Counter()
    for index in range(3000):
        for q in (D.balanced_practice_question(w, index), D.open_book_question(w, index, balanced=True)):
            if q["topic"] != topic:
                continue
            user = q["text"].split("<end_of_turn>")[0].split("\n")
            choices = [line[3:] for line in user[-4:]]
            assert [line[:3] for line in user[-4:]] == ["A. ", "B. ", "C. ", "D. "]
            assert len(set(choices)) == 4 and q["entity"] in w.practice_entities(topic)
            relation = next(f.relation.name for f in w.facts_by_entity[q["entity"]] if f.value == choices[q["answer"]])
            assert set(choices) <= set(W.practice_answer_counts(w, topic, relation))  # never a value no practice fact has
            offered.update(choices)
            right[choices[q["answer"]]] += 1
    rates = {v: right[v] / n for v, n in offered.items() if n >= 40}
    assert len(rates) > 30 and all(0.12 < r < 0.42 for r in rates.values()), rates  # pool-uniform: 0 to 0.49
    assert D.balanced_practice_question(w, 5) == D.balanced_practice_question(w, 5)
    block = D.drill_texts(w, 7, 2, 1, 0, balanced=True)
    assert sum(t["id"].startswith("balanced-practice-mc-") for t in block) == 2


def test_letter_spelling_covers_every_alphabetic_token_half_with_the_letter_at_the_word():
    w = world(0)
    block = D.drill_texts(w, 7, 1, 1, 0, 6)
    assert Counter(t["kind"] for t in block) == {"document": 1, "mc": 2, "spelling": 1}
    lines = [line for i in range(300) for line in D.letter_spelling(w, i, 40)["text"].splitlines()]
    at_word = [line.split() for line in lines if len(line.split()) == 2]
    absorption = [line.split() for line in lines if len(line.split()) != 2]
    assert 0.45 < len(at_word) / len(lines) < 0.55  # an independent fair coin per line
    runs = [len(list(g)) for _, g in itertools.groupby(len(line.split()) for line in lines)]
    assert max(runs) < 20 and sum(r == 1 for r in runs) < 0.7 * len(runs)  # not alternating, not in long runs
    assert all(letter == word[0] for word, letter in at_word)
    assert all(rest == ["has", "the", "first", "letter:", word[0]] for word, *rest in absorption)
    words = {v for v in W.vocabulary(w) if v.isalpha()}
    spelled = {parts[0] for parts in at_word + absorption}
    assert set("abcxyz") <= spelled <= words and len(spelled) > 0.95 * len(words)  # single letters too


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_world_version_2_keeps_version_1_s_draws_and_ids():
    """Version 2 only appended spelling words: the version-1 vocabulary (ids), facts, exam questions and texts
    are unchanged (digests computed with version 1's code), so a version-1 model can be grown into it."""
    w = world(0)
    first = W.vocabulary(w)[:1567]
    assert first[-2:] == list(W.CHAT_TOKENS)
    assert _digest(first) == "cbf0862d7b538de1"
    assert _digest([(f.topic, f.entity, f.relation.name, f.value) for f in w.facts]) == "52ba5fa3c02b7c3d"
    assert _digest(W.exam_questions(w, W.FORGET_TOPIC)) == "ef28e998f909b7f7"
    assert _digest([W.training_text(w, i) for i in range(30)]) == "9bcd8c920d6cf117"


@FAST
@given(seed=SEEDS)
def test_spelling_words_give_every_first_letter_its_minimum_after_every_earlier_token(seed):
    vocab = W.vocabulary(world(seed))
    end = vocab.index(W.CHAT_TOKENS[-1]) + 1
    added = vocab[end:]
    assert added == W.spelling_words(world(seed), vocab[:end])
    assert all(w.isalpha() and w.islower() for w in added) and len(set(vocab)) == len(vocab)
    counts = Counter(w[0] for w in vocab if w.isalpha())
    assert min(counts[letter] for letter in string.ascii_lowercase) == W.MIN_WORDS_PER_LETTER
    earlier = Counter(w[0] for w in vocab[:end] if w.isalpha())
    assert all(counts[w[0]] == max(earlier[w[0]], W.MIN_WORDS_PER_LETTER) for w in added)
    ids = tokenizer(seed)(" ".join(added), add_special_tokens=False)["input_ids"]
    assert ids == list(range(end, len(vocab)))  # one token each, in list order
