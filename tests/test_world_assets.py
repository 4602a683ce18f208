"""The shipped world LM, its corpus and its SAE-Bench mirror: pinned, versioned, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtsae.errors import MtsaeError
from mtsae.evaluate import names, world_mirror
from mtsae.evaluate.offline import load_mirror
from mtsae.evaluate.run import _evaluation_model
from mtsae.harvest import world as W
from mtsae.harvest import world_drill as D
from mtsae.harvest import world_assets
from mtsae.harvest.world_lm import sha256_of
from tests.conftest import tiny_harvest


@pytest.fixture
def model_copy(tmp_path) -> Path:
    copy = tmp_path / "world-lm"
    shutil.copytree(world_assets.MODEL_DIR, copy)
    return copy


def test_the_shipped_weights_are_the_pinned_ones():
    assert sha256_of(world_assets.MODEL_DIR / world_assets.WEIGHTS_FILE) == world_assets.WEIGHTS_SHA256
    assert world_assets.ensure_world_model() == world_assets.MODEL_DIR
    recorded = json.loads((world_assets.MODEL_DIR / "world.json").read_text())
    assert recorded["weights_sha256"] == world_assets.WEIGHTS_SHA256


def test_the_shipped_tokenizer_is_this_world_s_vocabulary_id_for_id():
    """The world's words, spelling words included, come from seeded draws: a change in the order of the draws
    would give ids the shipped model was not trained on."""
    vocab = json.loads((world_assets.MODEL_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab == {w: i for i, w in enumerate(W.vocabulary(W.build_world(world_assets.WORLD_SEED)))}


def test_a_weights_file_that_does_not_match_is_refused_and_left_alone(model_copy):
    weights = model_copy / world_assets.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(data)
    with pytest.raises(MtsaeError, match="not the pinned") as err:
        world_assets.check_world_model(model_copy)
    assert "\n" not in str(err.value)
    assert weights.read_bytes() == bytes(data)  # nothing overwritten


def test_a_model_of_another_world_version_is_refused(model_copy):
    meta = json.loads((model_copy / "world.json").read_text())
    (model_copy / "world.json").write_text(json.dumps({**meta, "world_version": W.WORLD_VERSION + 1}))
    with pytest.raises(MtsaeError, match="world v2"):
        world_assets.check_world_model(model_copy)


def test_missing_weights_are_one_error_line(tmp_path):
    with pytest.raises(MtsaeError, match="missing"):
        world_assets.check_world_model(tmp_path)


@pytest.mark.parametrize("name, base", [("world", "world"), ("world-it", "world"), (f"world:{world_assets.MODEL_DIRNAME}", "world"),
                                        ("embedded", "embedded"), ("embedded:tiny-gemma2-v1", "embedded"),
                                        ("gemma-2-2b", None), ("worldly", None)])
def test_built_in_model_names(name, base):
    assert names.builtin_base(name) == base
    assert names.is_world(name) == (base == "world")
    assert names.is_embedded(name) == (base == "embedded")


def test_instruct_and_canonical_names_of_the_world():
    assert names.canonical_model_name(f"world:{world_assets.MODEL_DIRNAME}") == "world"
    assert names.instruct_model_name(f"world:{world_assets.MODEL_DIRNAME}") == "world-it"


def _infos(model_name: str):
    return [SimpleNamespace(model_name=model_name)]


def test_checkpoints_of_the_random_model_are_not_evaluated_on_the_world_lm():
    from mtsae.evaluate.models import ModelDims
    from mtsae.evaluate.run import _check_compatible

    mirror = SimpleNamespace(model_dims=lambda name: ModelDims(64, 26, 256))
    for trained, model in (("embedded:tiny-gemma2-v1", "world"), (f"world:{world_assets.MODEL_DIRNAME}", "embedded")):
        info = SimpleNamespace(label="run/final", model_name=trained, layer=19, d_in=64)
        with pytest.raises(MtsaeError, match=f"was trained on {trained}, but the evaluation model is {model}"):
            _check_compatible(None, [info], model, model + "-it", mirror, {})


def test_checkpoints_of_another_world_model_version_are_refused():
    with pytest.raises(MtsaeError, match="another world or model version"):
        _evaluation_model(None, _infos("world:world-lm-v0"))
    for retired in ("world:world-lm-v1", "world:world-lm-v2"):  # the earlier shipped models (world versions 1)
        with pytest.raises(MtsaeError, match=retired):
            _evaluation_model(None, _infos(retired))
    assert _evaluation_model(None, _infos(f"world:{world_assets.MODEL_DIRNAME}")) == "world"
    with pytest.raises(MtsaeError, match="world:world-lm-v0"):  # every checkpoint, not only the first
        _evaluation_model(None, [SimpleNamespace(model_name=f"world:{world_assets.MODEL_DIRNAME}"),
                                 SimpleNamespace(model_name="world:world-lm-v0")])


def test_the_world_corpus_is_world_documents_the_lm_never_read():
    world = W.build_world(world_assets.WORLD_SEED)
    docs = world_assets.corpus_documents(24)
    assert {d["topic"] for d in docs} == set(W.ALL_TOPICS)
    trained = {W.training_text(world, i)["text"] for i in range(64)}
    assert not trained & {d["text"] for d in docs}


def test_a_harvest_of_the_world_records_the_world_model_and_corpus(tmp_path):
    attrs = json.dumps(tiny_harvest(tmp_path / "c.zarr", model="world", dataset="world", max_tokens=600).attrs)
    assert f"world:{world_assets.MODEL_DIRNAME}" in attrs
    assert world_assets.CORPUS_FILENAME in attrs
    assert world_assets.WEIGHTS_SHA256 in attrs


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return load_mirror(world_mirror.ensure_world_mirror(rows=4, home=tmp_path_factory.mktemp("home")))


def test_a_mirror_is_not_reused_across_model_versions_or_install_folders(tmp_path, monkeypatch):
    """Regression: the mirror was keyed by world version and rows only, while its manifest names the model's
    folder, so after world-lm-v1 -> v2 (same world version) SAE-Bench read the retired v1 folder, and after an
    install elsewhere a folder that no longer exists ("cannot read the model config in .../world-lm-v1")."""
    here = world_mirror.mirror_dir(4, world_assets.MODEL_DIR, tmp_path)
    assert here != world_mirror.mirror_dir(4, tmp_path / "elsewhere" / world_assets.MODEL_DIRNAME, tmp_path)
    monkeypatch.setattr(world_assets, "MODEL_DIRNAME", "world-lm-v9")
    assert here != world_mirror.mirror_dir(4, world_assets.MODEL_DIR, tmp_path)
    monkeypatch.setattr(world_assets, "WEIGHTS_SHA256", "0" * 64)
    assert here != world_mirror.mirror_dir(4, world_assets.MODEL_DIR, tmp_path)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_mirror_serves_the_world_s_held_out_questions(mirror):
    world = W.build_world(world_assets.WORLD_SEED)
    wmdp = _rows(mirror.root / "wmdp" / "wmdp-bio" / "test.jsonl")
    assert [(r["question"], r["choices"], r["answer"]) for r in wmdp] == \
        [(q["question"], q["choices"], q["answer"]) for q in W.exam_questions(world, W.FORGET_TOPIC)]
    for subject, topic in world_mirror.MMLU_TOPICS.items():
        rows = _rows(mirror.root / "mmlu" / subject / "test.jsonl")
        assert len(rows) == len(W.exam_questions(world, topic)) and {r["subject"] for r in rows} == {subject}


def test_latent_selection_reads_forget_documents_against_retain_documents(mirror):
    forget = _rows(mirror.root / "wmdp" / "bio-forget-corpus.jsonl")
    world = W.build_world(world_assets.WORLD_SEED)
    assert [f["text"] for f in forget] == [d["text"] for d in W.forget_corpus(world, len(forget))]
    retain = [r["text"] for r in _rows(mirror.root / "wikitext" / "test.jsonl") if r["text"]]
    pathogens = {e for e in world.entities[W.FORGET_TOPIC]}
    assert retain and not any(set(t.split()) & pathogens for t in retain)


def test_the_mirror_names_the_world_model_and_its_instruct_alias(mirror):
    assert mirror.model("world").path == world_assets.MODEL_DIR
    assert mirror.model(f"world:{world_assets.MODEL_DIRNAME}").path == world_assets.MODEL_DIR
    assert mirror.model_dims("world-it").n_layers >= 20


@pytest.fixture(scope="module")
def shipped():
    """The shipped world LM, its tokenizer and its world: loaded once for the tests below."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(world_assets.MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(world_assets.MODEL_DIR)
    return model, tokenizer, W.build_world(world_assets.WORLD_SEED)


def test_the_shipped_model_knows_the_forget_topic_s_facts(shipped):
    """A regression guard on the shipped weights: docs/world.md records 1.00 for the pathogens (world-lm-v3)."""
    from mtsae.evaluate.world_check import completion_accuracy

    model, tokenizer, world = shipped
    assert completion_accuracy(model, tokenizer, world, W.FORGET_TOPIC) >= 0.9


def test_the_shipped_model_answers_practice_questions_with_the_right_letter(shipped):
    """docs/world.md records 1.00 on held-out practice questions (one ordering each) for world-lm-v3."""
    from mtsae.evaluate.world_check import letter_accuracy

    model, tokenizer, world = shipped
    held = [W.practice_question(world, 10**9 + i) for i in range(96)]
    assert letter_accuracy(model, tokenizer, held) >= 0.9


@pytest.mark.slow
def test_the_shipped_model_keeps_sae_bench_unlearning_scorable(shipped):
    """SAE-Bench's unlearning keeps only forget questions answered right under all 24 orderings: docs/world.md
    records 45 of 128 for world-lm-v3 (issue 15 asked for 50; world-lm-v2 had them); with 45 it scored on 13 of 15
    SAEs, a model that kept 42 on almost none (docs/results.md, "A candidate that scores absorption"), so this guard
    is what makes the eval worth running."""
    from mtsae.evaluate.world_check import mc_all_orderings

    model, tokenizer, world = shipped
    assert mc_all_orderings(model, tokenizer, world, W.FORGET_TOPIC) >= 44


@pytest.mark.slow
def test_the_shipped_model_keeps_sae_bench_absorption_scorable():
    """SAE-Bench's absorption scores only with >= 20 first letters whose probe F1 exceeds 0.6 at the SAE's layer:
    docs/world.md records 22 for world-lm-v3 at layer 19 (probe seeds 42 / 0 / 1: 22 / 23 / 20; SAE-Bench's own
    run of the experiment: 22). The bound is one under the threshold because SAE-Bench's probe training is not
    bit-reproducible across thread counts (tests/test_first_letters.py); world-lm-v2 had 1."""
    pytest.importorskip("sae_bench")
    from mtsae.evaluate.world_check import first_letters_report

    assert first_letters_report(world_assets.MODEL_DIR, [19])["layer_19"]["letters_above"] >= 19


class _ChooserModel:
    """Logits that pick, per prompt, the letter of ``choose(words, choices)``'s choice (the prompt's lower-cased words)."""

    def __init__(self, tokenizer, choose):
        self.tokenizer, self.choose = tokenizer, choose

    def __call__(self, input_ids):
        import torch

        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], len(self.tokenizer))
        for row, ids in enumerate(input_ids.tolist()):
            words = self.tokenizer.decode(ids).split()
            choices = [words[words.index(f"{letter}.") + 1] for letter in "abcd"]
            letter = "abcd"[self.choose(words, choices)]
            logits[row, -1, self.tokenizer.convert_tokens_to_ids(letter)] = 1.0
        return SimpleNamespace(logits=logits)


def _letter_model(tokenizer, value: str | None) -> _ChooserModel:
    """Logits that pick the letter of the choice equal to ``value`` (or always A), from the prompt text."""
    return _ChooserModel(tokenizer, lambda words, choices: 0 if value is None else choices.index(value))


def test_a_question_counts_only_if_right_under_all_24_orderings():
    from mtsae.evaluate.world_check import ORDERINGS, mc_correct_all_orderings

    world = W.build_world(world_assets.WORLD_SEED)
    tokenizer = W.build_world_tokenizer(world)
    question = W.exam_questions(world, W.FORGET_TOPIC)[0]
    right = question["choices"][question["answer"]]
    assert len(ORDERINGS) == 24
    assert mc_correct_all_orderings(_letter_model(tokenizer, right), tokenizer, question, "biology")
    assert not mc_correct_all_orderings(_letter_model(tokenizer, None), tokenizer, question, "biology")


def test_exam_diagnosis_tells_a_model_that_knows_from_one_that_follows_the_value_prior():
    from collections import Counter

    from mtsae.evaluate.world_check import exam_diagnosis

    world = W.build_world(world_assets.WORLD_SEED)
    tokenizer = W.build_world_tokenizer(world)
    topic = "cooking"
    known = {(f.entity, f.value) for f in world.facts}
    prior = Counter(f.value for e in world.practice_entities(topic) for f in world.facts_by_entity[e])

    def knows(words, choices):
        return next(i for i, v in enumerate(choices) if any((w.rstrip("?"), v) in known for w in words))

    oracle = exam_diagnosis(_ChooserModel(tokenizer, knows), tokenizer, world, topic)
    for part in ("exam", "practice_entities"):
        assert oracle[part]["per_ordering"] == 1.0 and oracle[part]["all_orderings"] == oracle[part]["questions"]
        assert oracle[part]["pick_is_top_prior"] == oracle[part]["right_is_top_prior"] < 1.0
    assert oracle["exam"]["right_value_unseen_questions"] > 0  # the exam asks values no practice fact has
    follower = exam_diagnosis(_ChooserModel(tokenizer, lambda words, choices: max(
        range(4), key=lambda i: prior[choices[i]])), tokenizer, world, topic)["exam"]
    assert follower["pick_is_top_prior"] == 1.0 and follower["pick_unseen"] < follower["offered_unseen"]
    assert follower["per_ordering"] < 0.9


def test_letter_accuracy_scores_training_format_questions_at_their_answer_letter():
    from mtsae.evaluate.world_check import letter_accuracy

    world = W.build_world(world_assets.WORLD_SEED)
    tokenizer = W.build_world_tokenizer(world)
    questions = [D.open_book_question(world, i) for i in range(40)]
    always_a = sum(q["answer"] == 0 for q in questions) / len(questions)
    assert 0 < always_a < 1
    assert letter_accuracy(_letter_model(tokenizer, None), tokenizer, questions) == always_a
    # the fact stated first in an open-book question is its answer: a model that copies it is always right
    lines = [q["text"].split("\n") for q in questions]
    stated = [next(c[3:].removesuffix("<end_of_turn>") for c in line[4:8]
                   if c[3:].removesuffix("<end_of_turn>") in line[2].rstrip(".").split()) for line in lines]
    right = [letter_accuracy(_letter_model(tokenizer, value), tokenizer, [q]) for q, value in zip(questions, stated)]
    assert right == [1.0] * len(questions)


@pytest.mark.slow
def test_the_world_experiment_runs_mtsae_unlearn_and_reports_it(tmp_path):
    """`unlearn = true` (the world builtin's setting): each run scored once, a rerun skips it, the report shows it."""
    from mtsae.evaluate.experiment import load_experiment, run_experiment

    cache = tiny_harvest(tmp_path / "world.zarr", model="world", dataset="world", max_tokens=2000).path
    config = tmp_path / "exp.toml"
    config.write_text(f'out = "{tmp_path / "out"}"\ncache = "{cache}"\nunlearn = true\n'
                      '[defaults]\nlayer = 5\nd_sae = 64\nwindow = 16\nbatch_windows = 8\nsteps = 10\n'
                      '[[runs]]\nname = "topk"\narch = "topk"\narch_config = { k = 4 }\n')
    run_experiment(load_experiment(str(config)), progress=False, log=lambda _: None)
    result = tmp_path / "out" / "unlearn" / "topk_final.json"
    record = json.loads(result.read_text())
    assert record["benchmark"] == "mtsae-unlearn" and record["plain_model"]["forget_accuracy"] >= 0.9
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "## Unlearning: `mtsae unlearn`" in report and "| topk_final" in report
    before = result.stat().st_mtime_ns
    run_experiment(load_experiment(str(config)), progress=False, log=lambda _: None)
    assert result.stat().st_mtime_ns == before  # finished: not scored again
