"""What a world LM has learned: fact completion and SAE-Bench-style multiple choice.

Two measures of issue 15's targets, both on held-out or canonical text of the world
(:mod:`mtsae.harvest.world`):

* :func:`completion_accuracy` — next-token completion of each fact's canonical
  sentence cut before its value (``"the host of velrax is"`` → ``lustol``);
* :func:`mc_all_orderings` — SAE-Bench's unlearning selection: a question counts
  only if the model's highest-logit letter among A–D is the right one under all 24
  orderings of its choices (``sae_bench.evals.unlearning`` keeps exactly these).

Both take a Hugging Face causal LM and the world's tokenizer and run without grad.

:func:`first_letter_f1` is the gate of SAE-Bench's absorption eval (``f1_probe``
per letter, scorable when ``min_feats_for_eval`` letters exceed ``min_GT_probe_f1``),
computed by SAE-Bench's own probe code on a model folder, without an SAE.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from mtsae.harvest import world as W

ORDERINGS = tuple(itertools.permutations(range(len(W.LETTERS))))  # 24


def completion_accuracy(model, tokenizer, world: W.World, topic: str, batch: int = 64) -> float:
    """Fraction of the topic's facts whose value is the model's top next token (``mtsae unlearn``'s scoring)."""
    from mtsae.evaluate.unlearn import completion_correct, probe_set

    return float(completion_correct(model, probe_set(tokenizer, W.completion_probes(world, topic)), batch).float().mean())


def picks_all_orderings(model, tokenizer, question: dict, subject: str) -> list[int]:
    """Per ordering in ``ORDERINGS``: the index into ``question["choices"]`` of the choice whose letter has the
    highest A–D logit.

    The 24 prompts hold the same tokens in another order, so they form one batch without padding.
    """
    import torch

    from mtsae.evaluate.unlearn import answer_token, logits_of

    letters = [answer_token(tokenizer, letter) for letter in W.LETTERS]
    rows = [tokenizer(W.sae_bench_prompt(question["question"], [question["choices"][i] for i in order], subject),
                      add_special_tokens=False)["input_ids"] for order in ORDERINGS]
    with torch.no_grad():
        picked = logits_of(model, torch.tensor(rows))[:, -1, letters].argmax(-1).tolist()
    return [order[p] for order, p in zip(ORDERINGS, picked)]


def mc_correct_all_orderings(model, tokenizer, question: dict, subject: str) -> bool:
    """True if the right letter has the highest A–D logit under every ordering of the choices."""
    return all(p == question["answer"] for p in picks_all_orderings(model, tokenizer, question, subject))


def letter_accuracy(model, tokenizer, questions: list[dict]) -> float:
    """Single-ordering accuracy on training-format questions (``practice_question``/``open_book_question``
    records): the highest A–D logit right after ``Answer: (`` is the record's answer."""
    import torch

    from mtsae.evaluate.unlearn import answer_token, logits_of

    letters = [answer_token(tokenizer, letter) for letter in W.LETTERS]
    cut = "Answer: ("
    by_length: dict[int, list[tuple[list[int], int]]] = {}
    for q in questions:
        prompt = q["text"][: q["text"].rindex(cut) + len(cut)]
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        by_length.setdefault(len(ids), []).append((ids, q["answer"]))
    right = 0
    with torch.no_grad():
        for rows in by_length.values():
            picked = logits_of(model, torch.tensor([r[0] for r in rows]))[:, -1, letters].argmax(-1)
            right += int((picked == torch.tensor([r[1] for r in rows])).sum())
    return right / len(questions)


def mc_all_orderings(model, tokenizer, world: W.World, topic: str) -> int:
    """How many of the topic's exam questions are answered right under all 24 orderings."""
    subject = W.subject_of(topic)
    return sum(mc_correct_all_orderings(model, tokenizer, q, subject) for q in W.exam_questions(world, topic))


def first_letter_f1(path: Path, layer: int, seed: int = 42) -> dict[str, float]:
    """SAE-Bench absorption's ground-truth probe F1 per first letter a–z at ``layer`` of the model in ``path``.

    SAE-Bench's own steps, as its absorption eval takes them before it looks at any SAE: its vocabulary filter
    (every alphabetic token), its ICL prompts and 80/20 word split, the residual stream after block ``layer`` at
    its token position, its probe training; then ``f1_score(y, probe > 0)`` on the held-out words, the line of
    ``build_metrics_df`` that makes ``f1_probe``. Seeded as ``mtsae eval`` seeds an eval (``seed``: its default).
    """
    import tempfile

    import torch
    from sae_bench.evals.absorption.common import load_probe, load_probe_data_split, train_and_save_probes
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.vocab import LETTERS
    from sklearn.metrics import f1_score

    from mtsae.evaluate.models import load_hooked_transformer
    from mtsae.evaluate.rng import seeded

    config = AbsorptionEvalConfig()
    model = load_hooked_transformer(path, "world", "cpu")
    with tempfile.TemporaryDirectory(prefix="mtsae-first-letters-") as probes, seeded(seed):
        train_and_save_probes(model, [layer], config.prompt_template, config.prompt_token_pos, probes, device="cpu")
        probe = load_probe(model.cfg.model_name, layer, probes, torch.float32, "cpu")
        activations, labels = load_probe_data_split(model, layer, "test", probes, torch.float32, "cpu")
    with torch.no_grad():
        positive = (probe(activations) > 0).numpy()
    truth = [letter for _, letter in labels]
    return {letter: float(f1_score([t == i for t in truth], positive[:, i], zero_division=0.0))
            for i, letter in enumerate(LETTERS)}


def first_letters_report(path: Path, layers: list[int], seeds: tuple[int, ...] = (42,)) -> dict:
    """Per layer: the F1 of every letter and whether SAE-Bench's absorption eval would score (its defaults).

    With several ``seeds`` (the probe's split and training; near the threshold the count is a draw, docs/world.md)
    ``letters_above`` is the fewest over the seeds, ``scorable`` holds for every seed, and ``f1`` is the mean.
    """
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

    config, report = AbsorptionEvalConfig(), {}
    for layer in layers:
        per_seed = [first_letter_f1(path, layer, seed) for seed in seeds]
        counts = [sum(score > config.min_GT_probe_f1 for score in f1.values()) for f1 in per_seed]
        report[f"layer_{layer}"] = {"letters_above": min(counts), "needed": config.min_feats_for_eval,
                                    "scorable": min(counts) >= config.min_feats_for_eval,
                                    "letters_above_per_seed": dict(zip(map(str, seeds), counts)),
                                    "f1": {letter: round(sum(f1[letter] for f1 in per_seed) / len(seeds), 3)
                                           for letter in per_seed[0]}}
    return report


PROBE_QUESTIONS = 96
PROBE_OFFSET = 10**9  # question indices far beyond any training run's


def what_it_knows(model, tokenizer, world: W.World) -> dict:
    """Held-out single-ordering MC accuracy (practice and open-book) and forget-topic fact completion: what
    ``scripts/train_world_lm.py --probe-every`` logs while training."""
    from mtsae.harvest import world_drill

    model.eval()
    held = range(PROBE_OFFSET, PROBE_OFFSET + PROBE_QUESTIONS)
    probe = {"mc_practice": letter_accuracy(model, tokenizer, [W.practice_question(world, i) for i in held]),
             "mc_open_book": letter_accuracy(model, tokenizer, [world_drill.open_book_question(world, i) for i in held]),
             "forget_completion": completion_accuracy(model, tokenizer, world, W.FORGET_TOPIC)}
    model.train()
    return {k: round(v, 4) for k, v in probe.items()}


def knowledge_report(model, tokenizer, world: W.World) -> dict:
    """Completion accuracy and all-orderings MC counts for the forget topic and every retain topic."""
    from tqdm import tqdm

    report = {}
    for topic in tqdm(W.ALL_TOPICS, desc="topics", unit="topic"):
        report[topic] = {"completion": completion_accuracy(model, tokenizer, world, topic),
                         "mc_all_orderings": mc_all_orderings(model, tokenizer, world, topic),
                         "mc_questions": len(W.exam_questions(world, topic))}
    return report


def practice_entity_questions(world: W.World, topic: str, seed: int = 0) -> list[dict]:
    """One exam-style question per fact of the topic's *practice* entities (balanced letters, pool distractors):
    the exam's twin on entities the drill asked about."""
    import random

    rng = random.Random(f"practice-entity-questions:{seed}")
    facts = [f for e in world.practice_entities(topic) for f in world.facts_by_entity[e]]
    return [W.choice_question(rng, world, fact, i % len(W.LETTERS)) for i, fact in enumerate(facts)]


def exam_diagnosis(model, tokenizer, world: W.World, topic: str = W.FORGET_TOPIC) -> dict:
    """How the model answers the topic's MC questions (docs/world.md, "Exam questions: recall, not letters").

    Per-ordering accuracy and the all-24 count on the exam and on its practice-entity twin; and the value
    prior: how often the pick is the choice whose value is most often right among the practice facts
    (``pick_is_top_prior``) against how often the right answer is (``right_is_top_prior``), and the share of
    picks, offered choices and exam questions whose value no practice fact has.
    """
    from collections import Counter

    prior = {r.name: W.practice_answer_counts(world, topic, r.name) for r in world.relations[topic]}
    subject = W.subject_of(topic)
    report = {}
    for name, questions in (("exam", W.exam_questions(world, topic)),
                            ("practice_entities", practice_entity_questions(world, topic))):
        counts, right_all = Counter(), 0
        for q in questions:
            picks = picks_all_orderings(model, tokenizer, q, subject)
            right_all += all(p == q["answer"] for p in picks)
            weight = [prior[q["relation"]][v] for v in q["choices"]]
            counts["right"] += sum(p == q["answer"] for p in picks)
            counts["pick_is_top_prior"] += sum(weight[p] == max(weight) for p in picks)
            counts["right_is_top_prior"] += len(picks) * (weight[q["answer"]] == max(weight))
            counts["pick_unseen"] += sum(weight[p] == 0 for p in picks)
            counts["offered_unseen"] += len(picks) * sum(w == 0 for w in weight) / len(weight)
            counts["questions_right_unseen"] += weight[q["answer"]] == 0
        picks_total = len(questions) * len(ORDERINGS)
        report[name] = {"questions": len(questions), "all_orderings": right_all,
                        "per_ordering": round(counts.pop("right") / picks_total, 3),
                        "right_value_unseen_questions": counts.pop("questions_right_unseen"),
                        **{k: round(v / picks_total, 3) for k, v in counts.items()}}
    return report


def load_model_dir(path: Path):
    """A published world model (``OUT/model``) and its tokenizer, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def check_model_dir(path: Path, world_seed: int = 0) -> dict:
    """Load a published world model (``OUT/model``) and report what it knows."""
    return knowledge_report(*load_model_dir(path), W.build_world(world_seed))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mtsae.evaluate.world_check",
                                description="Fact completion and all-orderings MC accuracy of a world LM.")
    p.add_argument("model", type=Path, help="a model folder written by scripts/train_world_lm.py (OUT/model)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--first-letters", type=int, nargs="+", metavar="LAYER",
                   help="instead: SAE-Bench absorption's ground-truth probe F1 per first letter at these layers")
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[42], metavar="SEED",
                   help="with --first-letters: train SAE-Bench's probes with each seed (default: 42, mtsae eval's) "
                        "and report the fewest letters above 0.6 over them")
    p.add_argument("--diagnose", action="store_true",
                   help="instead: how the forget-topic questions are answered (exam against practice entities, "
                        "and the value prior); docs/world.md, 'Exam questions: recall, not letters'")
    args = p.parse_args(argv)
    if args.first_letters:
        print(json.dumps(first_letters_report(args.model, args.first_letters, tuple(args.probe_seeds)), indent=1))
    elif args.diagnose:
        print(json.dumps(exam_diagnosis(*load_model_dir(args.model), W.build_world(args.world_seed)), indent=1))
    else:
        print(json.dumps(check_model_dir(args.model, args.world_seed), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
