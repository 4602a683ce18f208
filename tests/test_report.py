"""`mtsae report`: figures and tables carry the runs' numbers; guardrails flag broken runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtsae.errors import MtsaeError
from mtsae.evaluate.report import load_run, write_report


def make_run(root: Path, name: str, *, steps=100, loss=1.0, fve=0.8, dead=0.1, l0=12.0, sae_acc=0.85, llm_acc=0.9,
             unlearning=None, finished=True, arch="relu", seed=0, core_ev=0.7) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"arch": arch, "preset": None, "seed": seed, "arch_config": {"l1_coefficient": 0.04}}
    (run / "run.json").write_text(json.dumps({"config": cfg, "cache_fingerprint": "abcdef123456789", "mtsae_version": "0.1.0"}))
    with open(run / "log.jsonl", "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"split": "train", "step": step, "tokens": step * 10, "loss": loss / step,
                                "mse": loss / step / 2, "l1": 0.1}) + "\n")
    if finished:
        (run / "final").mkdir()
        metadata = {"steps": steps, "cache_fingerprint": "abcdef123456789",
                    "final_metrics": {"fve": fve, "dead_fraction": dead, "l0": l0, "mse": 0.2, "sep": 0.3}}
        (run / "final" / "cfg.json").write_text(json.dumps({"mtsae": {"metadata": metadata}}))
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
    assert back["figures"]["loss_curves.png"]["baseline (relu, seed 0)"]["loss"][0] == 1.0
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
