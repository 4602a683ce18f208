"""`mtsae.evaluate.run.evaluate` end to end on the embedded default, through SAE-Bench's own eval code."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mtsae.devices import compute_dtype
from mtsae.errors import MtsaeError
from mtsae.evaluate import registry
from mtsae.evaluate.config import EvalConfig
from mtsae.evaluate.run import evaluate
from test_eval_support import save


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return [str(save(root, "relu")), str(save(root, "mtsae"))]


def run(checkpoints, out, **kw):
    return evaluate(EvalConfig(checkpoints=checkpoints, out=str(out), **kw), log=lambda _: None)


@pytest.fixture(scope="module")
def core_run(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("core")
    return out, run(checkpoints, out, evals=["core"])


def test_core_writes_sae_bench_json_and_summary(core_run, checkpoints):
    out, summary = core_run
    assert [(r["release"], r["status"]) for r in summary.rows] == [("relu-L5", "ok"), ("mtsae-L5", "ok")]
    result = json.loads((out / "core" / "mtsae-L5_custom_sae_eval_results.json").read_text())
    assert result["eval_type_id"] == "core"
    assert result["eval_config"]["model_name"] == "embedded"
    assert result["eval_config"]["n_eval_reconstruction_batches"] == 2
    cfg = result["sae_cfg_dict"]
    assert cfg["mtsae_checkpoint"] == checkpoints[1] and cfg["mtsae_cache_fingerprint"] == "f" * 64
    assert cfg["mtsae_architecture"] == "mtsae" and cfg["mtsae_sae_bench_version"]
    metrics = summary.rows[1]["metrics"]
    assert {"explained_variance", "l0", "kl_div_score", "ce_loss_score"} <= set(metrics)
    data = json.loads((out / "summary.json").read_text())
    assert data["model"] == "embedded" and data["profile"] == "tiny" and data["versions"]["sae-bench"]
    assert data["checkpoints"][0]["cache_fingerprint"] == "f" * 64 and data["offline_mirror"]
    assert "relu-L5" in summary.table() and not (out / ".work").exists()


def test_rerun_reuses_results_and_refuses_foreign_ones(core_run, checkpoints, tmp_path):
    out, _ = core_run
    again = run(checkpoints, out, evals=["core"])
    assert {(r["status"], r["reused"]) for r in again.rows} == {("ok", True)}
    assert again.rows[1]["metrics"] == core_run[1].rows[1]["metrics"]
    other = save(tmp_path, "relu")  # same release name "relu-L5", another checkpoint
    with pytest.raises(MtsaeError, match="another checkpoint"):
        run([str(other)], out, evals=["unlearning", "core"])
    assert not (out / "unlearning").exists()  # refused before anything ran


def test_a_crashing_eval_is_recorded_and_the_others_run(checkpoints, tmp_path, monkeypatch):
    def boom(job):
        raise RuntimeError("simulated SAE-Bench crash")

    monkeypatch.setitem(registry._REGISTRY, "core", dataclasses.replace(registry.get("core"), run=boom))
    summary = run(checkpoints[:1], tmp_path, evals=["core"])
    assert summary.rows[0]["status"] == "failed" and "simulated" in summary.rows[0]["reason"]
    assert (tmp_path / "core" / "core_error.txt").is_file()


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(model="google/gemma-2-2b"), "trained on"),
        (dict(layer=30), "has 26 layers"),
        (dict(d_in=32), "d_in 32"),
    ],
    ids=["other-model", "missing-layer", "other-width"],
)
def test_refuses_checkpoints_the_model_cannot_run(tmp_path, change, match):
    ckpt = save(tmp_path, "relu", layer=change.get("layer", 5), d_in=change.get("d_in", 64),
                model=change.get("model", "embedded:tiny-gemma2-v1"))
    if "model" in change:
        with pytest.raises(MtsaeError, match=match):
            run([str(ckpt)], tmp_path / "out", evals=["core"], model="embedded")
        return
    with pytest.raises(MtsaeError, match=match):
        run([str(ckpt)], tmp_path / "out", evals=["core"])


def test_refuses_bad_settings(checkpoints, tmp_path):
    with pytest.raises(MtsaeError, match="1024-token sequences but embedded has 256 positions"):
        run(checkpoints, tmp_path, evals=["unlearning"], profile="standard")
    with pytest.raises(MtsaeError, match="instruct variant"):
        run(checkpoints, tmp_path, evals=["unlearning"], unlearning_model="embedded")
    config = tmp_path / "bad.toml"
    config.write_text("[core]\nn_batches = 3\n")
    with pytest.raises(MtsaeError, match="unknown key"):
        run(checkpoints, tmp_path, evals=["core"], config_file=str(config))
    with pytest.raises(MtsaeError, match="--evals"):
        run(checkpoints, tmp_path, evals=["ravel"])
    assert not (tmp_path / "core").exists()  # nothing ran


def test_sparse_probing_two_datasets(checkpoints, tmp_path):
    config = tmp_path / "sp.toml"
    config.write_text('[sparse_probing]\ndataset_names = ["LabHC/bias_in_bios_class_set1", "fancyzhx/ag_news"]\n')
    summary = run(checkpoints, tmp_path / "out", evals=["sparse_probing"], config_file=str(config))
    assert [r["status"] for r in summary.rows] == ["ok", "ok"]
    result = json.loads((tmp_path / "out" / "sparse_probing" / "mtsae-L5_custom_sae_eval_results.json").read_text())
    assert [d["dataset_name"] for d in result["eval_result_details"]] == [
        "LabHC/bias_in_bios_class_set1_results", "fancyzhx/ag_news_results"]
    assert 0 <= summary.rows[1]["metrics"]["sae_top_1_test_accuracy"] <= 1


def test_sparse_probing_all_default_datasets(checkpoints, tmp_path):
    summary = run(checkpoints[1:], tmp_path, evals=["sparse_probing"])
    assert summary.rows[0]["status"] == "ok"
    result = json.loads((tmp_path / "sparse_probing" / "mtsae-L5_custom_sae_eval_results.json").read_text())
    assert len(result["eval_result_details"]) == 8


def test_unlearning_is_not_scorable_on_a_random_model(checkpoints, tmp_path):
    summary = run(checkpoints, tmp_path, evals=["unlearning"])
    assert {r["status"] for r in summary.rows} == {"not_scorable"}
    record = json.loads((tmp_path / "unlearning" / "relu-L5_custom_sae_not_scorable.json").read_text())
    assert record["model_name"] == "embedded-it" and "24 orderings" in record["reason"]
    assert record["sae_cfg_dict"]["mtsae_checkpoint"] == checkpoints[0]
    assert not list((tmp_path / "unlearning").glob("*_eval_results.json"))  # no fake score


def test_absorption_is_not_scorable_on_a_random_model(checkpoints, tmp_path):
    summary = run(checkpoints[1:], tmp_path, evals=["absorption"], keep_artifacts=True)
    assert summary.rows[0]["status"] == "not_scorable"
    assert "first letters" in summary.rows[0]["reason"]
    # SAE-Bench got as far as its own scorability check: probes trained, k-sparse probing of this SAE done.
    assert list((tmp_path / "artifacts" / "absorption").rglob("*k_sparse_probing.json"))


def test_online_gemma_run_is_prepared_as_sae_bench_expects(tmp_path, monkeypatch):
    """A hub model (no mirror): standard settings, the -it model, the forget corpus at SAE-Bench's relative path."""
    from mtsae.evaluate.patches import FORGET_CORPUS_RELPATH

    ckpt = save(tmp_path, "topk", d_in=2304, d_sae=32, model="google/gemma-2-2b", layer=12)
    with pytest.raises(MtsaeError, match="forget corpus"):
        run([str(ckpt)], tmp_path / "out", evals=["unlearning"])
    corpus = tmp_path / "bio-forget-corpus.jsonl"
    corpus.write_text('{"text": "x"}\n')
    seen = {}

    def fake(job):
        seen.update(model=job.model, settings=job.settings, linked=(job.workdir / FORGET_CORPUS_RELPATH).resolve(),
                    cwd=str(__import__("pathlib").Path.cwd()), sae_model=job.targets[0].sae.cfg.model_name)

    monkeypatch.setitem(registry._REGISTRY, "unlearning", dataclasses.replace(registry.get("unlearning"), run=fake))
    summary = run([str(ckpt)], tmp_path / "out", evals=["unlearning"], forget_corpus=str(corpus))
    assert seen["model"] == "google/gemma-2-2b-it" and seen["sae_model"] == "google/gemma-2-2b-it"
    assert seen["settings"]["llm_batch_size"] == 4  # 32 // 8
    assert seen["settings"]["llm_dtype"] == compute_dtype("bfloat16", torch.device(summary.data["device"]))
    assert seen["linked"] == corpus.resolve() and seen["cwd"].endswith("unlearning")
    assert summary.data["profile"] == "standard" and summary.data["offline_mirror"] is None
    assert summary.rows[0]["status"] == "failed"  # the fake wrote no result: never reported as a score


@pytest.mark.parametrize("device, isa, expected", [("cpu", "AVX2", "float32"), ("cpu", "ALL", None), ("cuda", "AVX2", "bfloat16")])
def test_the_standard_profiles_bf16_computes_in_float32_on_a_cpu_without_native_bf16(monkeypatch, device, isa, expected):
    from mtsae.evaluate.config import resolve_settings

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    expected = expected or compute_dtype("bfloat16", torch.device("cpu"))  # "ALL": this CPU's own answer
    settings = resolve_settings(EvalConfig(checkpoints=["x"], out="o"), "standard", device)
    assert settings["core"]["dtype"] == settings["sparse_probing"]["llm_dtype"] == expected
    explicit = resolve_settings(EvalConfig(checkpoints=["x"], out="o", llm_dtype="bfloat16"), "standard", device)
    assert explicit["core"]["dtype"] == "bfloat16"  # the user's choice is kept


def test_sae_bench_chatter_goes_to_the_eval_folders_log_and_times_are_per_sae(checkpoints, tmp_path, capfd):
    config = tmp_path / "evals.toml"
    config.write_text('[sparse_probing]\ndataset_names = ["LabHC/bias_in_bios_class_set1", "fancyzhx/ag_news"]\n')
    lines: list[str] = []
    summary = evaluate(EvalConfig(checkpoints=checkpoints, out=str(tmp_path / "out"), evals=["sparse_probing"],
                                  config_file=str(config)), log=lines.append)
    terminal = "".join(capfd.readouterr())
    log = (tmp_path / "out" / "sparse_probing" / "sae_bench.log").read_text()
    for chatter in ("Test accuracy for", "Training probe with dim", "Warning"):
        assert chatter not in terminal, chatter
    assert "Test accuracy for" in log and "Training probe with dim" in log and "FutureWarning" in log  # scikit-learn's
    assert terminal.count("[sparse_probing]") >= 1 and "2/2" in terminal  # the one bar, finished
    total = next(line for line in lines if "2 SAE(s) in" in line)
    seconds = [r["seconds"] for r in summary.rows]
    assert all(s is not None and s >= 0 for s in seconds)
    assert sum(seconds) <= float(total.split(" in ")[1].split(" s")[0]) + 1  # parts of the whole, not the whole twice
    assert [line.split(": ")[1] for line in lines if line.startswith("[sparse_probing] relu-L5:")] == [
        f"ok in {seconds[0]:.0f} s"]
