"""world_check.first_letter_f1: SAE-Bench absorption's ground-truth probe F1, measured on a model folder.

A tiny Gemma-2 whose blocks write nothing (o_proj and down_proj zero), so the residual stream at every
layer is the token embedding: with the first letter written into each word's embedding, SAE-Bench's own
prompts, position, split and probe must find all letters; with embeddings that carry no letter, none.
Reading the wrong position (any prompt token but the word) or the wrong words would fail the first case.
"""

from __future__ import annotations

import itertools
import string

import pytest

from mtsae.harvest import embedded

LAYER = 5
WORDS_PER_LETTER = 30  # so every letter has held-out words in SAE-Bench's 80/20 split


def _words() -> list[str]:
    tails = ["".join(p) for p in itertools.product("aeiou", "bdgkmnprst")][:WORDS_PER_LETTER]
    return [letter + tail for letter in string.ascii_lowercase for tail in tails]


def _write_model(directory, letters_in_embedding: bool) -> None:
    import torch
    from transformers import Gemma2ForCausalLM

    vocab = list(dict.fromkeys(["<pad>", "<eos>", "<bos>", "<unk>", "has", "the", "first", "letter", ":",
                                *string.ascii_lowercase, *_words()]))  # "has" is also one of _words()
    tokenizer = embedded.build_tokenizer(vocab)
    config = embedded._model_config(len(tokenizer))
    config.num_hidden_layers = LAYER + 1
    config.layer_types = config.layer_types[:LAYER + 1]
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # every block adds zero: residual = scaled embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embedding = model.get_input_embeddings().weight
        # Gemma scales embeddings by sqrt(64): residual norms ~35, as the world LM's at layers 5 and 19.
        embedding.normal_(0, 0.3)
        if letters_in_embedding:
            for token, i in tokenizer.get_vocab().items():
                if token.isalpha():
                    embedding[i, string.ascii_lowercase.index(token[0])] += 4.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.mark.parametrize("letters_in_embedding", [True, False])
def test_first_letter_f1_finds_letters_only_where_the_model_writes_them(tmp_path, letters_in_embedding):
    pytest.importorskip("sae_bench")
    from mtsae.evaluate.world_check import first_letters_report

    _write_model(tmp_path, letters_in_embedding)
    report = first_letters_report(tmp_path, [LAYER])[f"layer_{LAYER}"]
    assert set(report["f1"]) == set(string.ascii_lowercase)
    if letters_in_embedding:
        # SAE-Bench's probe is not exact at 0.6 and its training is not bit-reproducible across thread counts:
        # 23-26 letters measured (CI once 23), so the bound is its own scorability threshold, plus a median
        # far above anything the letterless model reaches
        assert report["letters_above"] >= 20 and report["scorable"]
        assert sorted(report["f1"].values())[13] >= 0.8
    else:
        assert report["letters_above"] == 0 and not report["scorable"]
        assert max(report["f1"].values()) < 0.5


def test_sae_bench_absorption_asks_about_every_alphabetic_word_of_the_world_vocabulary():
    """The words a world LM must be able to spell for absorption: SAE-Bench's filter keeps every alphabetic
    token of the world tokenizer (single letters included) and nothing else."""
    pytest.importorskip("sae_bench")
    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    from mtsae.harvest import world as W

    world = W.build_world(0)
    kept = get_alpha_tokens(W.build_world_tokenizer(world))
    assert sorted(kept) == sorted(w for w in W.vocabulary(world) if w.isalpha())
    assert set(string.ascii_lowercase) <= set(kept)


def test_several_probe_seeds_report_the_fewest_letters_and_the_mean_f1(monkeypatch):
    """Near SAE-Bench's threshold the count is a draw of the probe's seed (17-21 for one model, docs/world.md):
    a model is judged by its worst seed, not one draw."""
    pytest.importorskip("sae_bench")
    from mtsae.evaluate import world_check

    def fake_f1(path, layer, seed):
        above = {42: 21, 0: 19, 1: 23}[seed]
        return {letter: (0.9 if i < above else 0.1) for i, letter in enumerate(string.ascii_lowercase)}

    monkeypatch.setattr(world_check, "first_letter_f1", fake_f1)
    report = world_check.first_letters_report("unused", [19], seeds=(42, 0, 1))["layer_19"]
    assert report["letters_above_per_seed"] == {"42": 21, "0": 19, "1": 23}
    assert report["letters_above"] == 19 and not report["scorable"]
    assert report["f1"]["s"] == 0.9 and report["f1"]["v"] == round((0.1 + 0.1 + 0.9) / 3, 3)
    assert world_check.first_letters_report("unused", [19], seeds=(42, 1))["layer_19"]["scorable"]
