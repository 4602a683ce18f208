"""The in-house unlearning benchmark's mechanics (evaluate/unlearn.py) on a tiny world LM.

The LM is a 20-layer, 8-wide Gemma-2 trained a few steps by harvest/world_lm.py; the SAE is a
ReLU SAE whose encoder biases are set from the LM's own residuals, so that each latent fires on
a chosen fraction of tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from mtsae.evaluate import unlearn as U  # noqa: E402
from mtsae.evaluate.adapter import load_adapter  # noqa: E402
from mtsae.errors import MtsaeError  # noqa: E402
from mtsae.evaluate.unlearn_runs import markdown_summary  # noqa: E402
from mtsae.harvest import world as W  # noqa: E402
from mtsae.harvest import world_lm  # noqa: E402
from mtsae.train.checkpoint import save_checkpoint  # noqa: E402
from mtsae.train.registry import create_sae  # noqa: E402

LAYER = 5
TINY_LM = ["--hidden", "8", "--layers", "20", "--heads", "2", "--ctx", "32", "--batch", "2", "--lr", "1e-2",
           "--max-steps", "3"]
SETTINGS = U.UnlearnSettings(latent_counts=(0, 1, 3), clamp_values=(5.0, 50.0), forget_documents=2,
                             retain_documents=2, seq_len=32, batch_size=16, probe_batch_size=50,
                             progress=False)


@pytest.fixture(scope="module")
def world_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-lm")
    assert world_lm.main([*TINY_LM, "--out", str(out)]) == 0
    return out / "model"


@pytest.fixture(scope="module")
def lm(world_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(world_model_dir, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(world_model_dir), W.build_world(0)


def forget_rows(tokenizer, world, docs=2, seq_len=32):
    return U.document_rows(tokenizer, [d["text"] for d in W.forget_corpus(world, docs)], seq_len)


def make_sae(tmp_path, model_dir, model, rows, quantiles, name="sae"):
    """A ReLU SAE on the LM's width; latent i fires on about (1 - quantiles[i]) of ``rows``' tokens."""
    torch.manual_seed(1)
    sae = create_sae("relu", d_in=model.config.hidden_size, d_sae=len(quantiles))
    resid = U.residuals(model, rows, LAYER).flatten(0, 1)
    with torch.no_grad():
        pre = sae.pre_activations(resid)
        q = torch.tensor(quantiles, dtype=pre.dtype)
        sae.b_enc -= torch.stack([pre[:, i].quantile(q[i]) if q[i] < 1 else pre[:, i].max() + 1
                                  for i in range(len(quantiles))])
    path = save_checkpoint(sae, tmp_path / name, {"model_name": str(model_dir), "layer": LAYER})
    return load_adapter(path)


# --------------------------------------------------------------------------- splice and clamp


def test_the_splice_reproduces_the_model_exactly_where_no_selected_latent_fires(tmp_path, world_model_dir, lm):
    model, tokenizer, world = lm
    sae = make_sae(tmp_path, world_model_dir, model, forget_rows(tokenizer, world), [1.0, 1.0, 0.0])
    ids = forget_rows(tokenizer, world)[:4]
    plain = U.logits_of(model, ids)
    calls = []
    quiet_edit = U.clamp_edit(sae, [0, 1], 50.0)  # latents 0 and 1 never fire
    with U.residual_edit(model, LAYER, lambda r: calls.append(1) or quiet_edit(r)):
        spliced = U.logits_of(model, ids)
    assert calls and torch.equal(spliced, plain)
    with U.residual_edit(model, LAYER, U.clamp_edit(sae, [], 50.0)):
        assert torch.equal(U.logits_of(model, ids), plain)
    with U.residual_edit(model, LAYER, U.clamp_edit(sae, [2], 50.0)):  # latent 2 fires on every token
        assert not torch.allclose(U.logits_of(model, ids), plain)


def test_clamping_changes_the_stream_only_where_selected_latents_fire(tmp_path, world_model_dir, lm):
    model, tokenizer, world = lm
    rows = forget_rows(tokenizer, world)
    sae = make_sae(tmp_path, world_model_dir, model, rows, [0.7, 0.9, 0.0])
    resid = U.residuals(model, rows, LAYER)
    firing = (sae.encode(resid)[:, :, [0, 1]] > 0).any(-1)
    firing[:, 0] = False  # BOS is never clamped
    assert 0 < firing.float().mean() < 0.6
    changed = (U.clamp_edit(sae, [0, 1], 20.0)(resid.clone()) != resid).any(-1)
    assert torch.equal(changed, firing)
    # At the logits: prompts where no selected latent fires are untouched, the others move. A latent that
    # fires on ~2% of the prompts' tokens, so that both kinds of prompt occur.
    probes = U.probe_set(tokenizer, W.completion_probes(world, W.FORGET_TOPIC)[:40])
    (ids, _, _), = probes.groups  # the canonical templates cut before the value: all 6 tokens long
    rare = make_sae(tmp_path, world_model_dir, model, ids, [0.98], name="rare")
    fires = (rare.encode(U.residuals(model, ids, LAYER))[:, 1:, 0] > 0).any(-1)
    with U.residual_edit(model, LAYER, U.clamp_edit(rare, [0], 20.0)):
        clamped = U.logits_of(model, ids)[:, -1]
    plain = U.logits_of(model, ids)[:, -1]
    assert torch.equal(clamped[~fires], plain[~fires])
    assert (clamped[fires] != plain[fires]).any(-1).all()
    seen = torch.tensor([int(fires.sum()), int((~fires).sum())])
    assert (seen > 0).all(), seen  # both kinds of prompt were checked


def test_the_clamp_is_sae_benchs_intervention(tmp_path, world_model_dir, lm):
    from sae_bench.evals.unlearning.utils.intervention import anthropic_clamp_resid_SAE_features

    model, tokenizer, world = lm
    rows = forget_rows(tokenizer, world)
    sae = make_sae(tmp_path, world_model_dir, model, rows, [0.5, 0.8, 0.95, 0.99])
    resid = U.residuals(model, rows, LAYER)
    for latents, value in (([0], 1.0), ([1, 3], 20.0), ([0, 1, 2, 3], 50.0)):
        ours = U.clamp_edit(sae, latents, value)(resid.clone())
        theirs = anthropic_clamp_resid_SAE_features(resid.clone(), None, sae, latents, multiplier=value)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert not torch.equal(ours, resid)


# --------------------------------------------------------------------------- selection and coverage


def test_firing_frequencies_and_selection_match_sae_benchs_functions(tmp_path, world_model_dir, lm):
    from sae_bench.evals.unlearning.utils.feature_activation import get_top_features
    from sae_bench.sae_bench_utils.activation_collection import get_feature_activation_sparsity

    from mtsae.evaluate.models import load_hooked_transformer

    model, tokenizer, world = lm
    rows = forget_rows(tokenizer, world, docs=3)
    quantiles = [0.3, 0.6, 0.9, 0.97, 0.99, 0.995, 1.0, 0.5]
    sae = make_sae(tmp_path, world_model_dir, model, rows, quantiles)
    mask = U.token_mask(rows, tokenizer)
    assert not mask[:, 0].any() and mask.float().mean() > 0.8
    ours = U.firing_frequency(U.latent_firing(model, sae, rows, LAYER, batch_size=4), mask)
    tl_model = load_hooked_transformer(world_model_dir, "world-tiny", device="cpu")
    tl_ours = U.firing_frequency(U.latent_firing(tl_model, sae, rows, LAYER, batch_size=4), mask)
    theirs = get_feature_activation_sparsity(rows, tl_model, sae, batch_size=4, layer=LAYER,
                                             hook_name=f"blocks.{LAYER}.hook_resid_post", mask_bos_pad_eos_tokens=True)
    one_token = 1.0 / int(mask.sum())
    assert torch.allclose(ours, theirs.double(), atol=one_token) and torch.allclose(tl_ours, theirs.double(), atol=1e-12)
    assert ours[6] == 0 and ours[0] > ours[2] > ours[4]
    retain = torch.tensor([0.5, 0.0, 0.005, 0.02, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    chosen = U.select_latents(ours, retain, 0.01)
    assert chosen == [int(i) for i in get_top_features(theirs.double().numpy(), retain.numpy(), 0.01)]
    assert set(chosen) == {1, 2, 4, 5, 7} and chosen[0] in (1, 7)  # frequent on forget, rare on retain, fires


def test_explained_variance_tells_an_exact_sae_from_a_random_one(tmp_path, world_model_dir, lm):
    model, tokenizer, world = lm
    rows = forget_rows(tokenizer, world)
    mask = U.token_mask(rows, tokenizer)
    d = model.config.hidden_size
    exact = create_sae("relu", d_in=d, d_sae=2 * d)  # relu(x) - relu(-x) = x
    with torch.no_grad():
        exact.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)]))
        exact.W_enc.copy_(exact.W_dec.T)
    path = save_checkpoint(exact, tmp_path / "exact", {"model_name": str(world_model_dir), "layer": LAYER})
    assert U.explained_variance(model, load_adapter(path), rows, mask, LAYER) == pytest.approx(1.0, abs=1e-5)
    random_sae = make_sae(tmp_path, world_model_dir, model, rows, [0.5] * 16)
    assert U.explained_variance(model, random_sae, rows, mask, LAYER) < 0.9


def test_coverage_and_false_positive_rate_on_a_hand_made_case():
    firing = torch.zeros(2, 4, 3, dtype=torch.bool)
    firing[0, 1, 0] = firing[0, 2, 1] = firing[1, 3, 0] = firing[1, 3, 2] = firing[0, 0, 0] = True
    mask = torch.tensor([[False, True, True, True], [False, True, True, True]])  # position 0: BOS, not counted
    assert U.coverage(firing, mask, [0]) == pytest.approx(2 / 6)
    assert U.coverage(firing, mask, [0, 1]) == pytest.approx(3 / 6)
    assert U.coverage(firing, mask, [2]) == pytest.approx(1 / 6)
    assert U.coverage(firing, mask, []) == 0.0
    torch.testing.assert_close(U.firing_frequency(firing, mask), torch.tensor([2 / 6, 1 / 6, 1 / 6], dtype=torch.float64))


def test_document_rows_follow_sae_benchs_layout(lm):
    _, tokenizer, _ = lm
    texts = ["the host of a is b .", "music is loud", "x y z"]
    rows = U.document_rows(tokenizer, texts, 4)
    flat = []
    for i, text in enumerate(texts):
        flat += ([tokenizer.eos_token_id] if i else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    assert rows.shape == (len(flat) // 4, 4) and (rows[:, 0] == tokenizer.bos_token_id).all()
    assert rows[:, 1:].flatten().tolist() == [t for i, t in enumerate(flat[: rows.numel()]) if i % 4]
    with pytest.raises(U.MtsaeError, match="fewer than one 64-token row"):
        U.document_rows(tokenizer, ["short"], 64)


# --------------------------------------------------------------------------- the sweep


def test_with_no_latents_the_sweep_scores_the_plain_model(tmp_path, world_model_dir, lm):
    model, tokenizer, world = lm
    sae = make_sae(tmp_path, world_model_dir, model, forget_rows(tokenizer, world), [0.6, 0.9, 0.99, 0.3] * 4)
    result = U.sweep(model, tokenizer, sae, LAYER, world, SETTINGS)
    probes = W.completion_probes(world, W.FORGET_TOPIC)
    by_hand = []
    for probe in probes:  # one at a time, straight through transformers
        ids = tokenizer(probe["prompt"], return_tensors="pt")["input_ids"]
        by_hand.append(model(ids).logits[0, -1].argmax().item() == tokenizer.convert_tokens_to_ids(probe["answer"]))
    assert result["plain_model"]["forget_accuracy"] == pytest.approx(sum(by_hand) / len(probes))
    assert result["plain_model"]["forget_facts"] == 256 and result["plain_model"]["retain_facts"] == 384
    for point in (p for p in result["curve"] if p["latents_requested"] == 0):
        assert point["forget_accuracy"] == result["plain_model"]["forget_accuracy"]
        assert point["retain_accuracy"] == result["plain_model"]["retain_accuracy"]
        assert point["forget_kept"] in (None, 1.0) and point["retain_kept"] in (None, 1.0)
    assert len(result["curve"]) == 6 and [s["latents_requested"] for s in result["latent_sets"]] == [0, 1, 3]
    assert result["latent_sets"][0]["forget_token_coverage"] == 0.0
    assert result["selection"]["explained_variance"] < 1.0
    selected = result["selection"]["latents"]
    assert all(s["retain_frequency"] < SETTINGS.retain_threshold and s["forget_frequency"] > 0 for s in selected)


def test_a_strong_clamp_makes_the_model_lose_what_it_knew(tmp_path, world_model_dir, lm):
    """The tiny LM knows no fact, so its own predictions play the facts: kept starts at 1 and must fall."""
    model, tokenizer, world = lm
    sae = make_sae(tmp_path, world_model_dir, model, forget_rows(tokenizer, world), [0.0, 0.0, 0.0, 0.0])
    probes = U.probe_set(tokenizer, W.completion_probes(world, W.FORGET_TOPIC))
    known = U.ProbeSet(tuple((ids, U.logits_of(model, ids)[:, -1].argmax(-1), index)
                             for ids, _, index in probes.groups), probes.size)
    base = U.completion_correct(model, known, 50)
    assert base.all()
    no_firing, no_mask = torch.zeros(0, 0, 4, dtype=torch.bool), torch.zeros(0, 0, dtype=torch.bool)
    corpus = U.Corpus(known, known, base, base, no_mask, no_firing, no_mask, no_firing, no_mask)
    untouched = U.score_point(model, sae, LAYER, corpus, [], 50.0, 50)
    assert untouched["forget_kept"] == untouched["retain_kept"] == untouched["forget_accuracy"] == 1.0
    clamped = U.score_point(model, sae, LAYER, corpus, [0, 1, 2, 3], 50.0, 50)
    assert clamped["forget_kept"] < 0.9 and clamped["forget_kept"] == clamped["forget_accuracy"]
    curve = [{"latents": 0, "clamp": 50.0, **untouched}, {"latents": 4, "clamp": 50.0, **clamped}]
    assert U.headline(curve)["forget_drop"] == 0.0  # the same clamp costs retain as much: not eligible


def _known_probes(model, tokenizer, world):
    """The forget probes with the model's own predictions as answers: the tiny LM knows no fact, so these play them."""
    probes = U.probe_set(tokenizer, W.completion_probes(world, W.FORGET_TOPIC))
    return U.ProbeSet(tuple((ids, U.logits_of(model, ids)[:, -1].argmax(-1), index)
                            for ids, _, index in probes.groups), probes.size)


def _continuing_gives_the_whole_models_answers(model, sae, known):
    base, resids = U.completion_and_residuals(model, known, LAYER, 50)
    assert base.all()
    as_tuple = U.block_returns_tuple(model, LAYER)
    U.check_continuation(model, LAYER, known, resids, base, 50, as_tuple)
    changed = []
    for latents, value in (([0], 5.0), ([0], 50.0), ([0, 1, 2, 3], 50.0), ([], 50.0)):
        edit = U.clamp_edit(sae, latents, value)
        with U.residual_edit(model, LAYER, edit):
            whole = U.completion_correct(model, known, 50)
        assert torch.equal(U.completion_correct_from(model, LAYER, known, resids, base, edit, 50, as_tuple), whole)
        changed.append(int((~whole).sum()))
    assert changed[-1] == 0 and max(changed) > 0 and min(changed[:3]) < known.size, changed  # some answers moved


def test_reusing_the_plain_pass_gives_the_whole_models_answers(tmp_path, world_model_dir, lm):
    """The fast path (continue from the kept stream after the SAE's block, only where the clamp changes it) gives
    exactly the answers of the whole model run under the clamp, with transformers and with transformer_lens."""
    from mtsae.evaluate.models import load_hooked_transformer

    model, tokenizer, world = lm
    sae = make_sae(tmp_path, world_model_dir, model, forget_rows(tokenizer, world), [0.9, 0.5, 0.7, 0.95])
    _continuing_gives_the_whole_models_answers(model, sae, _known_probes(model, tokenizer, world))
    hooked = load_hooked_transformer(world_model_dir, "world-lm", "cpu", torch.float32)
    _continuing_gives_the_whole_models_answers(hooked, sae, _known_probes(hooked, tokenizer, world))


def test_the_sweep_gives_the_same_result_with_and_without_reuse(tmp_path, world_model_dir, lm):
    model, tokenizer, world = lm
    sae = make_sae(tmp_path, world_model_dir, model, forget_rows(tokenizer, world), [0.6, 0.9, 0.99, 0.3] * 4)
    settings = dataclasses.replace(SETTINGS, retain_threshold=1.0, batch_size=3)  # every firing latent is a candidate
    reused = U.sweep(model, tokenizer, sae, LAYER, world, settings, plain=U.model_pass(model, tokenizer, LAYER, world,
                                                                                      settings))
    assert U.sweep(model, tokenizer, sae, LAYER, world, settings, reuse=False) == reused
    assert reused["selection"]["candidates"] >= 3


def test_a_continuation_that_changes_answers_is_refused(lm):
    model, tokenizer, world = lm
    known = _known_probes(model, tokenizer, world)
    base, resids = U.completion_and_residuals(model, known, LAYER, 50)
    wrong = tuple(r * 3 for r in resids)  # not the stream the model computed
    with pytest.raises(MtsaeError, match="continuing the model from block 5's residual stream changes"):
        U.check_continuation(model, LAYER, known, wrong, base, 50, U.block_returns_tuple(model, LAYER))


def test_kept_fraction_and_headline():
    base = torch.tensor([True, True, False, True])
    assert U.kept_fraction(base, torch.tensor([True, False, True, True])) == pytest.approx(2 / 3)
    assert U.kept_fraction(torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)) is None

    def point(n, clamp, forget_kept, retain_kept):
        return {"latents": n, "clamp": clamp, "forget_kept": forget_kept, "retain_kept": retain_kept,
                "forget_accuracy": forget_kept}

    curve = [point(0, 0.0, 1.0, 1.0), point(2, 5.0, 0.6, 0.995), point(5, 5.0, 0.6, 1.0), point(5, 50.0, 0.1, 0.9)]
    best = U.headline(curve)
    assert (best["forget_drop"], best["latents"], best["clamp"]) == (pytest.approx(0.4), 2, 5.0)
    assert U.headline([point(0, 0.0, None, 1.0)])["reason"] == "the plain model completes no forget-topic fact"
    assert U.headline([point(3, 5.0, 0.2, 0.5)])["forget_drop"] is None


def test_bad_settings_are_refused():
    for bad, match in ((dict(latent_counts=(-1,)), "--latents"), (dict(clamp_values=(0.0,)), "--clamp"),
                       (dict(retain_threshold=0.0), "--retain-threshold"), (dict(seq_len=1), "--seq-len"),
                       (dict(forget_documents=0), "--forget-documents")):
        with pytest.raises(U.MtsaeError, match=match):
            U.UnlearnSettings(**bad).validate()


# --------------------------------------------------------------------------- mtsae unlearn


def _cli(*args):
    from typer.testing import CliRunner

    from mtsae.cli import app

    return CliRunner().invoke(app, ["unlearn", *map(str, args)])


CLI_SMALL = ["--latents", "0,1,3", "--clamp", "5,50", "--forget-documents", "2", "--retain-documents", "2",
             "--seq-len", "32", "--batch-size", "16", "--device", "cpu", "--no-progress"]


def test_mtsae_unlearn_writes_a_result_per_run_and_a_table(tmp_path, world_model_dir, lm):
    model, tokenizer, world = lm
    make_sae(tmp_path, world_model_dir, model, forget_rows(tokenizer, world), [0.6, 0.9, 0.99, 0.3] * 4)
    out = tmp_path / "results"
    result = _cli(tmp_path / "sae", "--out", out, *CLI_SMALL)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sae.json").read_text())
    assert record["model"].startswith(f"world LM {world_model_dir} (world v{W.WORLD_VERSION} seed 0, 3 steps, sha256 ")
    assert record["checkpoint"]["architecture"] == "relu" and record["checkpoint"]["layer"] == LAYER
    assert [p["latents_requested"] for p in record["curve"]] == [0, 0, 1, 1, 3, 3] and not record["non_causal"]
    table = (out / "unlearn.md").read_text()
    assert markdown_summary([record]) in table and markdown_summary([record]) in result.stdout
    assert f"| sae | {record['model']} | relu |" in table and "### sae" in table
    assert result.stdout.strip().endswith(f"results: {out / 'unlearn.md'}")
    assert "[unlearn] sae: relu at layer 5 on world LM" in result.stderr
    again = _cli(tmp_path / "sae", "--out", out, *CLI_SMALL)  # our own earlier result is replaced
    assert again.exit_code == 0, again.output


def _one_error_line(result, *fragments):
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _checkpoint(tmp_path, name, model_name, arch="relu", **config):
    sae = create_sae(arch, d_in=8, d_sae=16, **config)
    return save_checkpoint(sae, tmp_path / name, {"model_name": str(model_name), "layer": LAYER})


def test_mtsae_unlearn_refuses_what_it_cannot_score(tmp_path, world_model_dir):
    import shutil

    out = tmp_path / "out"
    _one_error_line(_cli(tmp_path / "missing", "--out", out), "not an mtsae checkpoint")
    _one_error_line(_cli(_checkpoint(tmp_path, "emb", "embedded"), "--out", out), "random weights", "not on a world model")
    _one_error_line(_cli(_checkpoint(tmp_path, "plain", tmp_path), "--out", out), "not a world model (no world.json)")
    leaky = _checkpoint(tmp_path, "leaky", world_model_dir, arch="mtsae", padding="replicate")
    _one_error_line(_cli(leaky, "--out", out), "not causal", "--allow-non-causal")
    tampered = tmp_path / "tampered"
    shutil.copytree(world_model_dir, tampered)
    record = json.loads((tampered / "world.json").read_text())
    (tampered / "world.json").write_text(json.dumps({**record, "weights_sha256": "0" * 64}))
    _one_error_line(_cli(_checkpoint(tmp_path, "t", tampered), "--out", out), "does not match the sha256")
    (tampered / "world.json").write_text(json.dumps({**record, "world_version": 99}))
    _one_error_line(_cli(_checkpoint(tmp_path, "v", tampered), "--out", out), "world version 99")
    (tampered / "world.json").write_text("{not json")
    _one_error_line(_cli(_checkpoint(tmp_path, "j", tampered), "--out", out), "damaged")
    wide = save_checkpoint(create_sae("relu", d_in=16, d_sae=16), tmp_path / "wide",
                           {"model_name": str(world_model_dir), "layer": LAYER})
    _one_error_line(_cli(wide, "--out", out), "d_in 16", "width 8")
    good = _checkpoint(tmp_path, "good", world_model_dir)
    _one_error_line(_cli(good, "--out", out, "--latents", "a,b"), "--latents takes comma-separated ints")
    _one_error_line(_cli(good, "--out", out, "--clamp", "-5"), "--clamp takes clamp values > 0")
    assert not out.exists()
    out.mkdir()
    (out / "good.json").write_text("precious")
    _one_error_line(_cli(good, "--out", out), "is not this benchmark's result", "choose another --out")
    assert (out / "good.json").read_text() == "precious"


def test_the_shipped_world_model_name_resolves_to_its_checked_folder(tmp_path):
    from mtsae.evaluate.checkpoints import read_checkpoint_info
    from mtsae.evaluate.unlearn_runs import read_world_model, world_model_path
    from mtsae.harvest.world_assets import MODEL_DIR

    from mtsae.harvest.world_assets import MODEL_DIRNAME

    for retired in ("world:world-lm-v1", "world:world-lm-v2"):  # the earlier shipped models
        old = read_checkpoint_info(_checkpoint(tmp_path, retired.split(":")[1], retired))
        with pytest.raises(MtsaeError, match="another world or model version"):
            world_model_path(old)
    path = _checkpoint(tmp_path, "w", f"world:{MODEL_DIRNAME}")
    folder = world_model_path(read_checkpoint_info(path))
    assert folder == MODEL_DIR
    assert read_world_model(folder).label.startswith(f"world LM {MODEL_DIR} (world v{W.WORLD_VERSION} seed 0, ")
