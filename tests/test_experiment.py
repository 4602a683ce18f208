"""`mtsae experiment`: trains what is missing, analyses, reports; re-running skips finished work."""

from __future__ import annotations

import json


import pytest

from mtsae.errors import MtsaeError
from mtsae.evaluate.experiment import load_experiment, run_experiment, slow_feature_verdict
from mtsae.evaluate.seed_spread import seed_group

TINY = """
out = "{out}"
evals = []
[synth]
d_model = 16
n_features = 32
n_sequences = 40
seq_len = 64
[defaults]
layer = 0
d_sae = 48
window = 32
batch_windows = 4
steps = 30
lr = 3e-3
[[runs]]
name = "relu"
arch = "relu"
[[runs]]
name = "temporal"
preset = "run2"
d_sae = 48
window = 32
"""


def test_experiment_end_to_end_then_skips_finished_runs(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(TINY.format(out=tmp_path / "out"))
    data = run_experiment(load_experiment(str(config)), progress=False, log=lambda _: None)
    assert [r["name"] for r in data["runs"]] == ["relu", "temporal"]
    assert all(r["finished"] and r["steps"] == 30 for r in data["runs"])
    assert set(data["analysis"]) == {"relu", "temporal"} and data["analysis"]["temporal"]["ground_truth"]["mmcs"] > 0
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "Ground truth: recovery of known features" in md and "**Verdict:**" in md
    final = tmp_path / "out" / "runs" / "relu" / "final" / "sae_weights.safetensors"
    before = final.stat().st_mtime_ns
    messages: list[str] = []
    run_experiment(load_experiment(str(config)), progress=False, log=messages.append)
    assert final.stat().st_mtime_ns == before
    assert any("relu: already trained, skipping" in m for m in messages)


def _analysis(arch, l0, recovered, mmcs):
    return {"architecture": arch, "l0": l0, "ground_truth": {"by_time_scale": {
        "slow (>=50)": {"recovered_fraction": recovered, "mmcs": mmcs}}}}


def test_verdict_states_the_outcome_whatever_it_is():
    better = slow_feature_verdict({"m": _analysis("mtsae", 10, 0.5, 0.9), "b": _analysis("relu", 11, 0.2, 0.8)})
    assert "recovers more slow features" in better and "50% vs 20%" in better and "comparable" in better
    worse = slow_feature_verdict({"m": _analysis("mtsae", 10, 0.1, 0.7), "b": _analysis("topk", 30, 0.2, 0.8)})
    assert "recovers fewer slow features" in worse and "NOT matched" in worse


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(MtsaeError, match="not found"):
        load_experiment(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\ncache = "c"\n[synth]\n[[runs]]\nname = "a"\n')
    with pytest.raises(MtsaeError, match="exactly one of"):
        load_experiment(str(bad))
    bad.write_text('out = "x"\ncache = "c"\nbogus = 1\n[[runs]]\nname = "a"\n')
    with pytest.raises(MtsaeError, match="unknown experiment key"):
        load_experiment(str(bad))
    assert load_experiment("synthetic").synth == {} and load_experiment("embedded-random").harvest == {}


def test_experiment_evaluates_every_run_in_one_sae_bench_pass(tiny_cache_path, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(f'''
out = "{tmp_path / 'out'}"
cache = "{tiny_cache_path}"
evals = ["core"]
[defaults]
layer = 5
d_sae = 64
window = 16
batch_windows = 8
steps = 10
[[runs]]
name = "relu"
arch = "relu"
[[runs]]
name = "temporal"
arch = "mtsae"
''')
    data = run_experiment(load_experiment(str(config)), progress=False, log=lambda _: None)
    for run in data["runs"]:
        assert run["evals"]["core"]["status"] == "ok", run
        assert run["evals"]["core"]["metrics"]["explained_variance"] <= 1  # 10 steps: a score, not necessarily a good one
    summaries = [json.loads((tmp_path / "out" / "runs" / name / "eval" / "summary.json").read_text()) for name in ("relu", "temporal")]
    assert [len(s["results"]) for s in summaries] == [1, 1]
    assert summaries[0]["results"][0]["checkpoint"].endswith("runs/relu/final")


def test_match_l0_trains_every_run_at_each_level_and_judges_within_a_level(tmp_path):
    config = tmp_path / "exp.toml"
    text = TINY.format(out=tmp_path / "out").replace("evals = []", "evals = []\nmatch_l0 = [4, 12]")
    config.write_text(text + '[[runs]]\nname = "topk"\narch = "topk"\n')
    cfg = load_experiment(str(config))
    runs = {spec["name"]: spec for spec in cfg.expanded_runs()}
    assert list(runs) == ["relu-l0_4", "temporal-l0_4", "topk-l0_4", "relu-l0_12", "temporal-l0_12", "topk-l0_12"]
    assert runs["relu-l0_4"]["target_l0"] == 4 and runs["temporal-l0_12"]["target_l0"] == 12
    assert runs["topk-l0_12"]["arch_config"] == {"k": 12} and "target_l0" not in runs["topk-l0_12"]

    data = run_experiment(cfg, progress=False, log=lambda _: None)
    final_l0 = {r["name"]: r["final"]["l0"] for r in data["runs"]}
    assert 2 < final_l0["topk-l0_4"] <= 4 and 6 < final_l0["topk-l0_12"] <= 12  # k caps L0; a code can be 0
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "At matched L0 4: **Verdict:**" in md and "At matched L0 12: **Verdict:**" in md


def test_match_l0_levels_are_checked(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(TINY.format(out=tmp_path / "out").replace("evals = []", "evals = []\nmatch_l0 = [0]"))
    with pytest.raises(MtsaeError, match="match_l0 must be a list of positive numbers"):
        load_experiment(str(config))
    config.write_text(TINY.format(out=tmp_path / "out").replace("evals = []", "evals = []\nmatch_l0 = [2.5]")
                      + '[[runs]]\nname = "topk"\narch = "topk"\n')
    with pytest.raises(MtsaeError, match="not a whole number"):
        load_experiment(str(config)).expanded_runs()


def test_experiment_harvests_reuse_and_publish_to_the_shared_root(tmp_path, monkeypatch):
    root = tmp_path / "team-caches"
    monkeypatch.setenv("MTSAE_SHARED_ROOT", str(root))
    config = tmp_path / "exp.toml"
    body = ('evals = []\nharvest_out = "{cache}"\n[harvest]\nmax_tokens = 3000\ncontext_len = 64\nbatch_size = 4\n'
            'chunk_tokens = 256\n[defaults]\nlayer = 5\nd_sae = 32\nwindow = 16\nbatch_windows = 4\nsteps = 3\n'
            '[[runs]]\nname = "relu"\narch = "relu"\n')
    config.write_text(f'out = "{tmp_path / "first"}"\n' + body.format(cache=tmp_path / "mine"))
    first: list[str] = []
    run_experiment(load_experiment(str(config)), progress=False, log=first.append)
    published = [p for p in root.iterdir() if (p / "zarr.json").is_file()]
    assert len(published) == 1 and not any("reusing" in line for line in first)

    # A teammate with the same settings and no local copy is handed the shared cache, not a new harvest.
    config.write_text(f'out = "{tmp_path / "second"}"\n' + body.format(cache=tmp_path / "theirs"))
    second: list[str] = []
    data = run_experiment(load_experiment(str(config)), progress=False, log=second.append)
    assert any("already holds this harvest" in line for line in second)
    assert not (tmp_path / "theirs").exists() and data["runs"][0]["finished"]
    assert data["runs"][0]["cache_fingerprint"].startswith(published[0].name)


def _groups(cfg) -> dict[str, list[int]]:
    """A built-in's runs by name without the seed, and the seeds of each."""
    groups: dict[str, list[int]] = {}
    for spec in cfg.expanded_runs():
        groups.setdefault(seed_group(spec["name"]), []).append(spec["seed"])
    return groups


def _is_causal(cfg, spec) -> bool:
    """Whether the SAE this run builds reads no later token (the trainer's own preset and option resolution)."""
    from mtsae.evaluate.experiment import _train_fields
    from mtsae.train.config import TrainConfig
    from mtsae.train.registry import get_architecture

    train = TrainConfig.from_dict(_train_fields(cfg.defaults, spec))
    config = get_architecture(train.arch).config_class.from_dict({"d_in": 64, "d_sae": train.d_sae, **train.arch_config})
    return config.is_causal


def test_the_demo_runs_on_the_trained_world_lm_and_full_is_issue_15s_experiment():
    from mtsae.evaluate.config import EvalConfig, resolve_settings
    from mtsae.evaluate.names import WORLD
    from mtsae.evaluate.sae_bench_evals import DEMO_PROBING_DATASETS

    demo, full, world = load_experiment("embedded"), load_experiment("embedded-full"), load_experiment("world")
    random = load_experiment("embedded-random")
    assert demo.harvest == full.harvest == world.harvest == {"model": WORLD, "dataset": WORLD}  # one cache for all
    assert "absorption" not in demo.evals and demo.eval_options == {"profile": "demo"} and demo.unlearn
    assert set(full.evals) == {"core", "sparse_probing", "unlearning", "absorption"} and full.unlearn
    assert demo.match_l0 == full.match_l0 == [16]
    demo_groups, full_groups = _groups(demo), _groups(full)
    assert all(len(seeds) >= 2 for seeds in demo_groups.values()) and len(demo_groups) >= 3
    assert all(len(seeds) >= 3 for seeds in full_groups.values())
    assert set(demo_groups) <= set(full_groups)  # the demo is a reduced embedded-full
    presets = {spec.get("preset") for spec in full.runs}
    assert {"run0", "run1", "run2", "run3"} <= presets and {"topk", "batchtopk", "jumprelu", "mtsae"} <= {
        spec.get("arch") for spec in full.runs}
    # Unlearning splices the SAE into the model: no run of the world experiments may read later tokens.
    for cfg in (demo, full):
        assert "allow_non_causal" not in cfg.eval_options
        assert all(_is_causal(cfg, spec) for spec in cfg.expanded_runs()), cfg.out
    assert not all(_is_causal(random, spec) for spec in random.runs)  # the check can fail: the seed's presets
    cfg = EvalConfig(checkpoints=["x"], out="o")
    demo_settings, tiny = resolve_settings(cfg, "demo", "cpu"), resolve_settings(cfg, "tiny", "cpu")
    assert demo_settings["sparse_probing"]["dataset_names"] == DEMO_PROBING_DATASETS
    assert len(DEMO_PROBING_DATASETS) == 2 and "dataset_names" not in tiny["sparse_probing"]  # tiny: all 8
    for name in ("core", "unlearning", "absorption"):
        assert demo_settings[name] == tiny[name]
    assert {k: v for k, v in demo_settings["sparse_probing"].items() if k != "dataset_names"} == tiny["sparse_probing"]


def test_the_random_weights_builtin_keeps_the_seeds_runs_as_the_seed_trained_them():
    random = load_experiment("embedded-random")
    assert random.harvest == {} and random.eval_options == {"profile": "demo", "allow_non_causal": True}
    assert "absorption" not in random.evals and not random.unlearn  # the random model scores neither
    assert [spec["name"] for spec in random.runs][:4] == ["baseline_sae", "basic_mtsae", "optimized_mtsae",
                                                          "expanded_context_mtsae"]


def test_the_demo_script_harvests_the_cache_its_experiment_reads():
    """scripts/demo.sh harvests, then runs `experiment embedded`, which finds that cache by its fingerprint."""
    import shlex
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "scripts" / "demo.sh").read_text()
    commands = [shlex.split(line.split("#")[0].split("$(", 1)[-1].rstrip(") ")) for line in script.splitlines()
                if "mtsae " in line.split("#")[0]]
    harvest = next(c for c in commands if c[:2] == ["mtsae", "harvest"])
    options = {name.removeprefix("--").replace("-", "_"): value for name, value in zip(harvest[2::2], harvest[3::2])}
    assert options == load_experiment("embedded").harvest
    assert ["mtsae", "experiment", "embedded"] in commands


def test_every_built_in_trains_jumprelu_from_the_one_default_start():
    """One start serves synthetic codes and LM caches (θ learned in log space, following the encoder's
    scale: docs/results.md, JumpReLU); no built-in overrides it."""
    for name in ("synthetic", "world", "embedded-full"):
        runs = [r for r in load_experiment(name).runs if r.get("arch") == "jumprelu"]
        assert runs and all(not r.get("arch_config") for r in runs), name
