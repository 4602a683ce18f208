"""Training the world LM (harvest/world_lm.py).

A tiny run learns and loads with transformers; a run resumes; mismatches are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2ForCausalLM  # noqa: E402

from mtsae.harvest import world_lm  # noqa: E402

TINY = ["--hidden", "8", "--layers", "20", "--heads", "2", "--ctx", "32", "--batch", "2", "--lr", "1e-2"]


def _run(out, *extra, capsys=None, probe=None) -> tuple[int, str]:
    rc = world_lm.main([*TINY, "--out", str(out), *extra], probe=probe)
    return rc, (capsys.readouterr() if capsys else None)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train-log.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_writes_a_model_transformers_loads(tmp_path, capsys):
    out = tmp_path / "run"
    rc, captured = _run(out, "--max-steps", "12", "--checkpoint-every", "6", capsys=capsys)
    assert rc == 0
    losses = [row["loss"] for row in _log(out)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    model_dir = out / "model"
    weights = model_dir / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"sha256: {digest}" in captured.out
    assert (model_dir / "model.safetensors.sha256").read_text().split()[0] == digest
    assert json.loads((model_dir / "world.json").read_text())["weights_sha256"] == digest
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert isinstance(model, Gemma2ForCausalLM) and model.config.num_hidden_layers == 20
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat = tokenizer("<bos><start_of_turn>user\nAnswer: (B)<end_of_turn>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(chat) == ["<bos>", "<start_of_turn>", "user", "answer", ":", "(", "b", ")",
                                                     "<end_of_turn>"]
    ids = tokenizer("the route of", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids[0].tolist()
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    # rerunning a finished run trains nothing and reports the same weights
    rc, captured = _run(out, "--max-steps", "12", "--checkpoint-every", "6", capsys=capsys)
    assert rc == 0 and f"sha256: {digest}" in captured.out and len(_log(out)) == 12


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert _run(straight, "--max-steps", "6", "--checkpoint-every", "3")[0] == 0
    expected = world_lm.sha256_of(straight / "model" / "model.safetensors")

    interrupted = tmp_path / "interrupted"
    real_save = world_lm._save_state

    def save_then_die(out, model, optimizer, step, settings):
        real_save(out, model, optimizer, step, settings)
        raise KeyboardInterrupt  # as if the process were stopped right after the first checkpoint

    monkeypatch.setattr(world_lm, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(interrupted, "--max-steps", "6", "--checkpoint-every", "3")
    assert not (interrupted / "model").exists()
    monkeypatch.setattr(world_lm, "_save_state", real_save)
    assert _run(interrupted, "--max-steps", "6", "--checkpoint-every", "3")[0] == 0
    assert [row["step"] for row in _log(interrupted)] == [1, 2, 3, 4, 5, 6]
    assert world_lm.sha256_of(interrupted / "model" / "model.safetensors") == expected


def test_other_settings_in_the_same_folder_stop_with_one_error_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, "--max-steps", "2")[0] == 0
    before = {p.name: p.read_bytes() for p in (out / "model").iterdir()}
    capsys.readouterr()
    rc, captured = _run(out, "--max-steps", "3", capsys=capsys)
    assert rc == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "steps: 2 there, 3 now" in lines[0]
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == before
    (out / "state.pt").unlink()  # without the state, the published model's record still refuses
    rc, captured = _run(out, "--max-steps", "3", capsys=capsys)
    assert rc == 1 and captured.err.count("\n") == 1 and "holds a model of other settings" in captured.err
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == before


@pytest.mark.parametrize("argv, message", [
    (["--layers", "19", "--max-steps", "1"], "--layers must be >= 20"),
    (["--heads", "3", "--max-steps", "1"], "--heads must be even"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--max-steps", "1", "--tokens", "10"], "not allowed with argument"),
])
def test_bad_options_are_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        world_lm.main(["--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_token_budget_rounds_up_to_whole_steps(tmp_path):
    args = world_lm.parse_args(["--out", str(tmp_path), "--tokens", "1000", "--batch", "2", "--ctx", "32"])
    assert args.steps == 16  # ceil(1000 / 64)


def test_a_second_stage_starts_from_the_published_model_and_records_it(tmp_path, capsys):
    first = tmp_path / "first"
    assert _run(first, "--max-steps", "3")[0] == 0
    published = first / "model"
    second = tmp_path / "second"
    stage = ["--init", str(published), "--mix", "drill", "--drill-closed", "2", "--drill-open-book", "1",
             "--drill-spelling", "4", "--answer-weight", "4", "--lr", "1e-9"]
    assert _run(second, "--max-steps", "1", *stage)[0] == 0
    recorded = json.loads((second / "model" / "world.json").read_text())
    assert recorded["init_sha256"] == world_lm.sha256_of(published / "model.safetensors")
    assert recorded["mix"] == "drill" and recorded["answer_weight"] == 4.0
    assert "drill_letters" not in recorded  # absent when 0: world-lm-v2's settings read as they were
    start = AutoModelForCausalLM.from_pretrained(published).state_dict()
    after = AutoModelForCausalLM.from_pretrained(second / "model").state_dict()
    # one step at lr 1e-9 (warmup: 1e-9) from the published weights stays on them
    assert max((start[k] - after[k]).abs().max().item() for k in start) < 1e-6


def test_drill_letters_is_part_of_what_defines_a_run(tmp_path):
    base = ["--out", str(tmp_path), "--max-steps", "1", "--mix", "drill"]
    assert world_lm.settings_of(world_lm.parse_args([*base, "--drill-letters", "30"]))["drill_letters"] == 30
    assert "drill_letters" not in world_lm.settings_of(world_lm.parse_args(base))
    with pytest.raises(SystemExit):
        world_lm.parse_args([*base, "--drill-letters", "-1"])


def test_drill_qa_is_part_of_what_defines_a_run(tmp_path):
    base = ["--out", str(tmp_path), "--max-steps", "1", "--mix", "drill"]
    assert world_lm.settings_of(world_lm.parse_args([*base, "--drill-qa", "40"]))["drill_qa"] == 40
    assert "drill_qa" not in world_lm.settings_of(world_lm.parse_args(base))  # world-lm-v2's settings unchanged
    with pytest.raises(SystemExit):
        world_lm.parse_args([*base, "--drill-qa", "-1"])
    balanced = world_lm.settings_of(world_lm.parse_args([*base, "--drill-balanced"]))
    assert balanced["drill_balanced"] is True and "drill_balanced" not in world_lm.settings_of(world_lm.parse_args(base))


def test_a_second_stage_on_a_folder_of_another_shape_is_one_error_line(tmp_path, capsys):
    assert _run(tmp_path / "first", "--max-steps", "1")[0] == 0
    capsys.readouterr()
    rc = world_lm.main([*TINY, "--hidden", "16", "--out", str(tmp_path / "second"), "--max-steps", "1",
                        "--init", str(tmp_path / "first" / "model")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: ") and "does not fit this model" in err
    with pytest.raises(SystemExit) as exc:
        world_lm.main([*TINY, "--out", str(tmp_path / "third"), "--max-steps", "1", "--init", str(tmp_path)])
    assert exc.value.code == 2 and "not a model folder this script published" in capsys.readouterr().err
    # a teacher of another shape: one error line that names --distill-from, nothing published
    rc = world_lm.main([*TINY, "--hidden", "16", "--out", str(tmp_path / "fourth"), "--max-steps", "1",
                        "--distill-from", str(tmp_path / "first" / "model")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("error: --distill-from ") and "does not fit" in err
    assert not (tmp_path / "fourth" / "model").exists()


def test_answer_positions_are_the_parens_after_a_colon_and_weight_one_is_the_plain_loss():
    from mtsae.harvest import world as W

    world = W.build_world(0)
    tokenizer = W.build_world_tokenizer(world)
    text = W.practice_question(world, 3)["text"]  # "(with answers)" has a '(' too, not after ':'
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    answer_ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in (":", "("))
    where = world_lm.answer_positions(ids, answer_ids)[0].nonzero().flatten().tolist()
    assert len(where) == 1
    assert tokenizer.convert_ids_to_tokens(ids[0, where[0] + 1].item()).upper() == W.LETTERS[
        W.practice_question(world, 3)["answer"]]
    torch.manual_seed(0)
    logits = torch.randn(1, ids.shape[1], len(tokenizer))
    plain = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert torch.allclose(world_lm.lm_loss(logits, ids, answer_ids, 1.0), plain)
    weighted = world_lm.lm_loss(logits, ids, answer_ids, 5.0)
    assert not torch.allclose(weighted, plain)


def test_probe_every_logs_what_the_model_knows(tmp_path, capsys):
    from mtsae.evaluate.world_check import what_it_knows

    # without a measure (scripts/train_world_lm.py passes one) --probe-every is one error line, nothing trained
    rc, captured = _run(tmp_path / "none", "--max-steps", "3", "--probe-every", "2", capsys=capsys)
    assert rc == 1 and captured.err.count("\n") == 1 and "--probe-every needs a measure" in captured.err
    assert not (tmp_path / "none" / "state.pt").exists()
    out = tmp_path / "run"
    assert _run(out, "--max-steps", "3", "--probe-every", "2", probe=what_it_knows)[0] == 0
    probes = [row for row in _log(out) if "probe" in row]
    assert [row["step"] for row in probes] == [2, 3]  # every 2 steps and at the end
    for row in probes:
        assert set(row["probe"]) == {"mc_practice", "mc_open_book", "forget_completion"}
        assert all(0.0 <= v <= 1.0 for v in row["probe"].values())


def test_distill_loss_is_the_mean_kl_over_kept_positions_and_zero_on_the_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 11)
    kept = torch.tensor([[True, True, False, True, False], [False, True, True, False, False]])
    assert world_lm.distill_loss(teacher.clone(), teacher, kept).item() == pytest.approx(0.0, abs=1e-6)
    student = teacher.clone()
    student[~kept] = torch.randn(int((~kept).sum()), 11)  # where it is not kept the student may say anything
    assert world_lm.distill_loss(student, teacher, kept).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 5, 11)
    p, q = teacher[kept].softmax(-1), student[kept].softmax(-1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean()
    assert world_lm.distill_loss(student, teacher, kept).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert world_lm.distill_loss(student, teacher, torch.zeros_like(kept)).item() == 0.0


def test_token_batches_mark_which_texts_are_kept():
    from mtsae.harvest import world as W

    tokenizer = W.build_world_tokenizer(W.build_world(0))
    blocks = {0: [("the host of", True), ("velo v", False)], 1: [("the route of", True)]}
    ids, kept = next(world_lm.token_batches(lambda i: blocks[i % 2], tokenizer, ctx=6, batch=2, skip=0))
    tokens = tokenizer.convert_ids_to_tokens(ids.flatten().tolist())
    marks = kept.flatten().tolist()
    # <bos> the host of <eos> | <bos> velo v <eos> | <bos> the route ...
    assert tokens[:5] == ["<bos>", "the", "host", "of", "<eos>"] and marks[:5] == [True] * 5
    assert tokens[5] == "<bos>" and marks[5:9] == [False] * 4 and tokens[8] == "<eos>"
    assert marks[9:] == [True] * 3


def test_drill_kept_texts_are_all_but_the_first_letter_lines(tmp_path):
    from mtsae.harvest import world as W

    from mtsae.harvest import world_drill

    args = world_lm.parse_args(["--out", str(tmp_path), "--max-steps", "1", "--mix", "drill", "--drill-letters", "5"])
    block = world_lm.stream_texts(W.build_world(0), args)(0)
    assert [text for text, kept in block if not kept] == [world_drill.letter_spelling(W.build_world(0), 0, 5)["text"]]
    assert len(block) == 1 + 6 + 3 + 1 + 1  # document, closed, open-book, vocabulary spelling, letters: all kept but one


def test_distill_from_holds_the_student_near_its_teacher_and_is_recorded(tmp_path):
    from mtsae.harvest import world as W

    teacher = tmp_path / "teacher"
    assert _run(teacher, "--max-steps", "3")[0] == 0
    stage = ["--init", str(teacher / "model"), "--mix", "drill", "--drill-closed", "2", "--drill-open-book", "1",
             "--drill-spelling", "2", "--drill-letters", "20", "--max-steps", "8"]
    assert _run(tmp_path / "free", *stage)[0] == 0
    assert _run(tmp_path / "held", *stage, "--distill-from", str(teacher / "model"), "--distill-weight", "50")[0] == 0
    recorded = json.loads((tmp_path / "held" / "model" / "world.json").read_text())
    assert recorded["distill_sha256"] == world_lm.sha256_of(teacher / "model" / "model.safetensors")
    assert recorded["distill_weight"] == 50.0
    assert "distill_sha256" not in json.loads((tmp_path / "free" / "model" / "world.json").read_text())
    args = world_lm.parse_args([*TINY, "--out", str(tmp_path / "x"), *stage])
    world = W.build_world(0)
    tokenizer = W.build_world_tokenizer(world)
    ids, kept = next(world_lm.token_batches(world_lm.stream_texts(world, args), tokenizer, 32, 4, skip=20))

    def kl_to_teacher(run):
        with torch.no_grad():
            logits = {name: AutoModelForCausalLM.from_pretrained(folder / "model")(input_ids=ids).logits
                      for name, folder in (("t", teacher), ("s", run))}
        return world_lm.distill_loss(logits["s"], logits["t"], kept).item()

    assert kl_to_teacher(tmp_path / "held") < 0.5 * kl_to_teacher(tmp_path / "free")  # measured: 0.003 vs 0.009


@pytest.mark.parametrize("extra, message", [
    (["--distill-from", "."], "--distill-from . is not a model folder"),
    (["--distill-weight", "0"], "--distill-weight must be a positive number"),
    (["--distill-weight", "nan"], "--distill-weight must be a positive number"),
])
def test_bad_distill_options_are_refused(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        world_lm.main(["--out", str(tmp_path / "x"), "--max-steps", "1", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def _moved_by_a_stage(tmp_path, *extra) -> set[str]:
    """Train ``start`` for 3 steps, then a 3-step drill stage on it with ``extra`` into ``stage``: the tensors
    whose values the stage changed."""
    start = tmp_path / "start"
    assert _run(start, "--max-steps", "3")[0] == 0
    stage = ["--init", str(start / "model"), "--mix", "drill", "--drill-closed", "2", "--drill-open-book", "1",
             "--drill-spelling", "2", "--max-steps", "3", "--lr", "5e-2"]
    assert _run(tmp_path / "stage", *stage, *extra)[0] == 0
    before = AutoModelForCausalLM.from_pretrained(start / "model").state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "stage" / "model").state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_freeze_below_trains_only_the_layers_from_it_and_is_recorded(tmp_path):
    moved = _moved_by_a_stage(tmp_path, "--freeze-below", "19")
    start = tmp_path / "start"
    assert moved and all(k.startswith(("model.layers.19.", "model.norm.")) for k in moved)
    assert any(k.startswith("model.layers.19.") for k in moved) and "model.norm.weight" in moved
    recorded = json.loads((tmp_path / "stage" / "model" / "world.json").read_text())
    assert recorded["freeze_below"] == 19
    assert "freeze_below" not in json.loads((start / "model" / "world.json").read_text())
    # the residual stream after layer 18 is the start model's, exactly
    ids = torch.arange(5, 37).unsqueeze(0)
    hidden = {name: AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids, output_hidden_states=True)
              .hidden_states for name, folder in (("start", start / "model"), ("stage", tmp_path / "stage" / "model"))}
    assert torch.equal(hidden["start"][19], hidden["stage"][19])  # hidden_states[i + 1]: after layer i
    assert not torch.equal(hidden["start"][20], hidden["stage"][20])


def test_embeddings_only_trains_only_the_tied_embeddings_and_is_recorded(tmp_path):
    moved = _moved_by_a_stage(tmp_path, "--drill-letters", "10", "--embeddings-only")
    assert moved == {"model.embed_tokens.weight", "lm_head.weight"}  # one tied matrix
    recorded = json.loads((tmp_path / "stage" / "model" / "world.json").read_text())
    assert recorded["embeddings_only"] is True and "freeze_below" not in recorded


@pytest.mark.parametrize("extra, message", [
    (["--embeddings-only"], "--embeddings-only keeps layers as --init has them: give --init"),
    (["--init", "{init}", "--embeddings-only", "--freeze-below", "20"], "not allowed with argument"),
    (["--freeze-below", "20"], "--freeze-below keeps layers as --init has them: give --init"),
    (["--init", "{init}", "--freeze-below", "0"], "--freeze-below must be between 1 and 25 (--layers - 1), got 0"),
    (["--init", "{init}", "--freeze-below", "26"], "--freeze-below must be between 1 and 25"),
])
def test_bad_trained_part_options_are_refused(tmp_path, capsys, extra, message):
    (tmp_path / "world.json").write_text("{}")
    argv = [a.replace("{init}", str(tmp_path)) for a in extra]
    with pytest.raises(SystemExit) as exc:
        world_lm.main(["--out", str(tmp_path / "x"), "--max-steps", "1", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _as_world_version_1(model_dir, into):
    """``model_dir`` as a version-1 model would have been published: the spelling words' rows and tokens cut."""
    from safetensors.torch import load_file, save_file

    from mtsae.harvest import world as W

    shutil.copytree(model_dir, into)
    kept = W.vocabulary(W.build_world(0)).index(W.CHAT_TOKENS[-1]) + 1
    weights = load_file(into / "model.safetensors")
    save_file({k: (v[:kept].contiguous() if v.shape[0] > kept else v) for k, v in weights.items()},
              into / "model.safetensors")
    tokenizer = json.loads((into / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {w: i for w, i in tokenizer["model"]["vocab"].items() if i < kept}
    (into / "tokenizer.json").write_text(json.dumps(tokenizer))
    record = json.loads((into / "world.json").read_text())
    (into / "world.json").write_text(json.dumps({**record, "world_version": 1}))
    config = json.loads((into / "config.json").read_text())
    (into / "config.json").write_text(json.dumps({**config, "vocab_size": kept}))
    return kept


def test_a_version_1_model_is_grown_into_this_world_with_its_outputs_kept(tmp_path):
    assert _run(tmp_path / "start", "--max-steps", "2")[0] == 0
    kept = _as_world_version_1(tmp_path / "start" / "model", tmp_path / "v1")
    old = AutoModelForCausalLM.from_pretrained(tmp_path / "v1").eval()
    grown = AutoModelForCausalLM.from_pretrained(tmp_path / "start" / "model").eval()
    world_lm._load_init(grown, tmp_path / "v1")
    embeddings = grown.get_input_embeddings().weight
    assert torch.equal(embeddings[:kept], old.get_input_embeddings().weight)
    assert torch.allclose(embeddings[kept:], old.get_input_embeddings().weight.mean(0).expand(len(embeddings) - kept, -1))
    ids = torch.tensor([[2, 5, 40, 300]])
    with torch.no_grad():
        assert torch.allclose(grown(ids).logits[..., :kept], old(ids).logits, atol=1e-5)
    assert _run(tmp_path / "stage", "--max-steps", "1", "--init", str(tmp_path / "v1"), "--mix", "drill",
                "--drill-closed", "1", "--drill-open-book", "1", "--drill-spelling", "1")[0] == 0


def _rename_a_token(folder):
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["zzzz"] = vocab.pop("the")  # ids would mean other words
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))


def _unreadable_world_seed(folder):
    record = json.loads((folder / "world.json").read_text())
    (folder / "world.json").write_text(json.dumps({**record, "world_seed": "zero"}))


@pytest.mark.parametrize("tamper", [_rename_a_token, _unreadable_world_seed])
def test_a_model_of_another_world_version_whose_vocabulary_differs_is_one_error_line(tmp_path, capsys, tamper):
    assert _run(tmp_path / "start", "--max-steps", "2")[0] == 0
    _as_world_version_1(tmp_path / "start" / "model", tmp_path / "v1")
    tamper(tmp_path / "v1")
    capsys.readouterr()
    rc, captured = _run(tmp_path / "stage", "--max-steps", "1", "--init", str(tmp_path / "v1"), capsys=capsys)
    lines = captured.err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "trained on world version 1" in lines[0] and "not the start of this one's" in lines[0]
    assert not (tmp_path / "stage" / "model").exists()
