"""`mtsae report`: figures and tables carry the runs' numbers; guardrails flag broken runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtsae.errors import MtsaeError
from mtsae.evaluate.report import load_run, write_report


def make_run(root: Path, name: str, *, steps=100, loss=1.0, fve=0.8, dead=0.1, l0=12.0, sae_acc=0.85, llm_acc=0.9,
             unlearning=None, finished=True, arch="relu", seed=0, core_ev=0.7, model="google/gemma-2-2b",
             arch_config=None, k=None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    arch_config = {"l1_coefficient": 0.04} if arch_config is None else arch_config
    cfg = {"arch": arch, "preset": None, "seed": seed, "layer": 12, "arch_config": arch_config}
    (run / "run.json").write_text(json.dumps({"config": cfg, "cache_fingerprint": "abcdef123456789", "mtsae_version": "0.1.0"}))
    with open(run / "log.jsonl", "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"split": "train", "step": step, "tokens": step * 10, "loss": loss / step,
                                "mse": loss / step / 2, "l1": 0.1}) + "\n")
            if step % 50 == 0:
                f.write(json.dumps({"split": "heldout", "step": step, "fve": fve, "mse": 0.2, "l0": l0}) + "\n")
    if finished:
        (run / "final").mkdir()
        metadata = {"steps": steps, "cache_fingerprint": "abcdef123456789", "model_name": model,
                    "model_revision": "0123abc", "layer": 12, "d_in": 2304,
                    "final_metrics": {"fve": fve, "dead_fraction": dead, "l0": l0, "mse": 0.2, "sep": 0.3}}
        if arch_config.get("l1_coefficient") is not None:
            metadata["sparsity_coefficient"] = {"name": "l1_coefficient", "value": arch_config["l1_coefficient"]}
        saved = {"metadata": metadata, "config": {"k": k} if k is not None else {}}
        (run / "final" / "cfg.json").write_text(json.dumps({"mtsae": saved}))
    rows = [{"eval": "sparse_probing", "status": "ok", "metrics": {"llm_test_accuracy": llm_acc, "sae_test_accuracy": sae_acc}},
            {"eval": "core", "status": "ok", "metrics": {"explained_variance": core_ev}}]
    if unlearning is not None:
        rows.append({"eval": "unlearning", **unlearning})
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text(json.dumps({"results": rows}))
    return run


def test_figures_and_tables_hold_the_runs_numbers(tmp_path):
    a = make_run(tmp_path, "baseline", sae_acc=0.81, llm_acc=0.93, l0=20.0,
                 unlearning={"status": "ok", "metrics": {"unlearning_score": 0.05}})
    b = make_run(tmp_path, "mtsae_run2", arch="mtsae", sae_acc=0.77, seed=3,
                 unlearning={"status": "not_scorable", "reason": "no question answered correctly"})
    data = write_report([a, b], tmp_path / "report")
    out = tmp_path / "report"
    for name in ("accuracy_comparison.png", "loss_curves.png", "sparsity_comparison.png", "unlearning.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads((out / "report.json").read_text())
    assert back == json.loads(json.dumps(data, default=str))
    accuracy = back["figures"]["accuracy_comparison.png"]
    assert accuracy["baseline (relu, seed 0)"] == {"llm": 0.93, "sae": 0.81}
    assert accuracy["mtsae_run2 (mtsae, seed 3)"]["sae"] == 0.77
    assert back["figures"]["sparsity_comparison.png"]["baseline (relu, seed 0)"]["l0"] == 20.0
    assert back["figures"]["loss_curves.png"]["baseline (relu, seed 0)"]["mse"][0] == 0.5
    unlearning = back["figures"]["unlearning.png"]
    assert unlearning["baseline (relu, seed 0)"]["unlearning_score"] == 0.05
    assert unlearning["mtsae_run2 (mtsae, seed 3)"]["status"] == "not_scorable"
    md = (out / "report.md").read_text()
    assert "| baseline | relu | 0 | 100 | 0.8 |" in md and "abcdef123456" in md and "mtsae 0.1" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<td>mtsae_run2</td>" in html


@pytest.mark.parametrize(
    ("broken", "flag"),
    [
        (dict(steps=0, finished=False), "trained 0 steps"),
        (dict(loss=float("nan")), "NaN/Inf training loss"),
        (dict(fve=-0.2), "explained variance -0.200 <= 0"),
        (dict(core_ev=-0.44), "SAE-Bench core explained variance -0.440 <= 0"),
        (dict(sae_acc=0.5), "sparse probing at chance"),
        (dict(dead=0.75), "75% dead latents"),
        (dict(finished=False), "did not finish"),
    ],
)
def test_guardrails_flag_broken_runs_and_keep_them_out_of_figures(tmp_path, broken, flag):
    good = make_run(tmp_path, "good")
    bad = make_run(tmp_path, "bad", **broken)
    record = load_run(bad)
    assert any(flag in f for f in record.flags), record.flags
    assert load_run(good).flags == []
    data = write_report([good, bad], tmp_path / "r")
    for figure in ("accuracy_comparison.png", "sparsity_comparison.png", "loss_curves.png"):
        assert not any(label.startswith("bad ") for label in data["figures"][figure]), figure
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Flagged runs" in md and "**FLAGGED:" in md and flag.split(" (")[0] in md


def test_the_seed_experiments_broken_result_cannot_pass(tmp_path):
    """0 training steps and probing at 0.5 everywhere: the original experiment's 'result'."""
    run = make_run(tmp_path, "seed_run", steps=0, finished=False, sae_acc=0.5, llm_acc=0.5)
    flags = load_run(run).flags
    assert "trained 0 steps" in flags and any("chance" in f for f in flags) and "no training loss logged" in flags


def test_not_a_run_is_refused(tmp_path):
    with pytest.raises(MtsaeError, match="not a training run"):
        load_run(tmp_path)
    with pytest.raises(MtsaeError, match="no runs"):
        write_report([], tmp_path / "r")


def test_non_causal_runs_are_marked_but_kept_in_figures(tmp_path):
    """A run evaluated with --allow-non-causal: its core row says causal false; the report says what that means."""
    run = make_run(tmp_path, "run2", arch="mtsae")
    summary = json.loads((run / "eval" / "summary.json").read_text())
    for row in summary["results"]:
        row["causal"] = False
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    causal = make_run(tmp_path, "relu")
    data = write_report([run, causal], tmp_path / "report")
    runs = {r["name"]: r for r in data["runs"]}
    assert runs["run2"]["caveats"] == ["non-causal SAE: its core scores come from a model that sees later tokens "
                                       "through it"] and runs["run2"]["flags"] == []
    assert runs["relu"]["caveats"] == []
    assert "run2 (mtsae, seed 0) [non-causal]" in data["figures"]["accuracy_comparison.png"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## ⚠ Non-causal SAEs" in md and "| run2 | mtsae |" in md and "non-causal SAE: its core" in md


def test_html_is_rendered_by_markdown_it_with_user_text_escaped(tmp_path):
    """report.html comes from markdown-it-py: tables, emphasis, code; raw HTML in run names stays text."""
    from mtsae.evaluate.report import _html

    (tmp_path / "fig.png").write_bytes(b"\x89PNG fake")
    (tmp_path.parent / "outside.png").write_bytes(b"\x89PNG outside")
    markdown = ("# Title\n\nRuns: `a<b>` and **<script>alert(1)</script>**\n\n| run | fve |\n|---|---|\n| x_y | 0.5 |\n\n"
                "![Figure](fig.png)\n\n![Outside](../outside.png)\n")
    page = _html(markdown, tmp_path)
    assert "<h1>Title</h1>" in page and "<code>a&lt;b&gt;</code>" in page
    assert "<strong>&lt;script&gt;alert(1)&lt;/script&gt;</strong>" in page and "<script>" not in page
    assert "<th>run</th>" in page and "<td>x_y</td>" in page
    assert page.count("data:image/png;base64,") == 1 and 'src="../outside.png"' in page


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report draws, by file name, kept open for inspection after it is saved."""
    from mtsae.evaluate import figures as module

    figures, save = {}, module.save_figure

    def keep(fig, path):
        figures[path.name] = fig
        save(fig, path)

    monkeypatch.setattr(module, "save_figure", keep)
    return figures


def test_a_random_weights_model_is_named_and_warned_about_first_and_chance_is_drawn(tmp_path, drawn):
    runs = [make_run(tmp_path, name, model="embedded:tiny-gemma2-v1", arch=arch)
            for name, arch in (("relu_run", "relu"), ("mtsae_run", "mtsae"))]
    write_report(runs, tmp_path / "r")
    head = "\n".join((tmp_path / "r" / "report.md").read_text().splitlines()[:6])
    assert "Random weights" in head and "embedded:tiny-gemma2-v1" in head
    assert "layer 12, d_model 2304" in head and "0123abc" in head
    assert "Random weights" in (tmp_path / "r" / "report.html").read_text()
    accuracy = drawn["accuracy_comparison.png"]
    chance = [line for ax in accuracy.axes for line in ax.get_lines() if line.get_gid() == "chance"]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {0.5}
    assert "RANDOM-WEIGHTS" in accuracy._suptitle.get_text()


def test_a_real_model_gets_no_random_weights_warning(tmp_path):
    write_report([make_run(tmp_path, "a")], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Random weights" not in md and "Model: google/gemma-2-2b (0123abc), layer 12, d_model 2304." in md
    assert "trained weights, not random" not in md


def test_the_world_lm_is_named_as_trained_and_gets_no_random_weights_warning(tmp_path, drawn):
    from mtsae.evaluate.names import WORLD
    from mtsae.harvest.world_assets import MODEL_DIRNAME

    world = f"{WORLD}:{MODEL_DIRNAME}"  # what a cache harvested with --model world records
    write_report([make_run(tmp_path, "a", model=world)], tmp_path / "r")
    head = "\n".join((tmp_path / "r" / "report.md").read_text().splitlines()[:6])
    assert f"Model: {world} (0123abc), layer 12, d_model 2304." in head
    assert f"{world}: mtsae's small Gemma-2 trained on its seeded fictional world" in head
    assert "trained weights, not random" in head and "Random weights" not in head
    assert "RANDOM-WEIGHTS" not in drawn["accuracy_comparison.png"]._suptitle.get_text()
    random = make_run(tmp_path, "b", model="embedded:tiny-gemma2-v1")
    write_report([random], tmp_path / "r2")
    assert "trained weights, not random" not in (tmp_path / "r2" / "report.md").read_text()


def _data_artists(ax):
    return [a for a in [*ax.get_lines(), *ax.patches, *ax.collections]]


@pytest.mark.parametrize("components", [False, True])
def test_no_figure_puts_two_objectives_on_one_axis(tmp_path, drawn, components):
    runs = [make_run(tmp_path, "relu_run", unlearning={"status": "ok", "metrics": {"unlearning_score": 0.1}}),
            make_run(tmp_path, "topk_run", arch="topk", arch_config={"k": 8}, k=8)]
    write_report(runs, tmp_path / "r", loss_components=components)
    assert set(drawn) == {"accuracy_comparison.png", "loss_curves.png", "sparsity_comparison.png", "unlearning.png"}
    for name, fig in drawn.items():
        for ax in fig.axes:
            artists = _data_artists(ax)
            assert all(a.get_gid() for a in artists), f"{name}: a drawn artist does not say which quantity it shows"
            quantities = {a.get_gid() for a in artists} - {"chance"}
            assert len(quantities) <= 1, f"{name} puts {sorted(quantities)} on one axis"
    if components:  # each run's own total loss, on its own axis
        assert sum(1 for ax in drawn["loss_curves.png"].axes if {a.get_gid() for a in _data_artists(ax)} == {"total loss"}) == 2


def test_sparsity_labels_name_their_penalty_and_never_none(tmp_path):
    runs = [make_run(tmp_path, "relu_run"), make_run(tmp_path, "topk_run", arch="topk", arch_config={"k": 8}, k=8),
            make_run(tmp_path, "jump", arch="jumprelu", arch_config={"l0_coefficient": 2.0})]
    data = write_report(runs, tmp_path / "r")["figures"]["sparsity_comparison.png"]
    assert [d["sparsity"] for d in data.values()] == ["L1 λ=0.04", "k=8", "L0 λ=2"]
    assert "None" not in json.dumps(data, default=str).replace("null", "")


def test_runs_far_from_the_median_l0_are_marked_not_l0_matched(tmp_path, drawn):
    runs = [make_run(tmp_path, "a", l0=10.0), make_run(tmp_path, "b", l0=11.0), make_run(tmp_path, "c", l0=40.0)]
    write_report(runs, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| c (not L0-matched) |" in md and "| a |" in md and "| b |" in md
    ticks = [t.get_text() for t in drawn["accuracy_comparison.png"].axes[0].get_xticklabels()]
    assert sum("not L0-matched" in t for t in ticks) == 1


def test_an_unlearning_figure_with_no_score_is_not_drawn_and_its_reason_is_whole(tmp_path):
    reason = "no question answered correctly by the instruct model on WMDP-bio or MMLU, so unlearning is undefined here"
    runs = [make_run(tmp_path, "a", unlearning={"status": "not_scorable", "reason": reason})]
    out = tmp_path / "r"
    (out).mkdir()
    (out / "unlearning.png").write_bytes(b"stale")  # an earlier report's figure
    data = write_report(runs, out)
    assert data["figures"]["unlearning.png"] is None and not (out / "unlearning.png").exists()
    md = (out / "report.md").read_text()
    assert reason in md and "![Unlearning]" not in md
