"""`mtsae train`: presets with overrides, TOML configs, resume, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from mtsae.cache import open_cache
from mtsae.cli import app
from mtsae.train.loader import WindowDataset
from mtsae.train.checkpoint import load_checkpoint
from mtsae.train.config import TrainConfig, Windowing, load_config
from mtsae.train.registry import architecture_names
from mtsae.train.rundir import RUN_LOCK, read_log

runner = CliRunner()
SMALL = ["--window", "16", "--batch-windows", "8", "--eval-every", "5", "--eval-tokens", "0",
         "--holdout-fraction", "0.1", "--no-progress"]


def invoke(*args):
    # A wide terminal so that rich does not cut option names in --help.
    return runner.invoke(app, ["train", *map(str, args)], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})


def test_help_lists_every_option_with_defaults_and_registry_archs():
    result = invoke("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for option in ("--cache", "--out", "--preset", "--arch", "--layer", "--d-sae", "--window", "--stride",
                   "--batch-windows", "--train-tokens", "--steps", "--lr", "--lr-warmup-steps", "--lr-decay",
                   "--sparsity-warmup-steps", "--grad-clip", "--normalize-activations", "--holdout-fraction",
                   "--eval-every", "--checkpoint-every", "--seed", "--device", "--dtype", "--resume", "--force",
                   "--config", "--l1-coefficient", "--k", "--dilations", "--cos-coefficient", "--padding",
                   "--kernel-size", "--arch-option"):
        assert option in text, option
    assert f"One of: {', '.join(architecture_names())}" in text
    assert "Default: 0.0003" in text and "Default: 19" in text and "Examples" in text


def test_preset_with_small_overrides(tiny_cache_path, tmp_path):
    out = tmp_path / "run1"
    result = invoke("--cache", tiny_cache_path, "--preset", "run1", "--d-sae", 32, "--steps", 6,
                    "--l1-coefficient", 0.01, "--dilations", "1,2", "--out", out, *SMALL)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str(out / "final")
    assert lines[-2].startswith("held-out after 6 steps") and "fve=" in lines[-2] and "sep=" in lines[-2]
    cache = open_cache(tiny_cache_path)
    train = WindowDataset(cache, 19, Windowing(window=16, holdout_fraction=0.1, seed=0), split="train").sequences
    lengths = np.diff(cache.seq_offsets)[train]
    assert 0 < (lengths < 16).sum() < len(train)  # the tiny cache has sequences shorter than the window
    assert (f"never trained on: {(lengths < 16).sum()} of {len(train)} train sequences "
            f"({lengths[lengths < 16].sum()} of {lengths.sum():,} tokens") in lines[-2]
    assert "shorter than the 16-token window" in lines[-2]
    sae, meta = load_checkpoint(out / "final")
    assert sae.architecture == "mtsae" and sae.cfg.d_sae == 32
    assert sae.cfg.dilations == (1, 2) and sae.cfg.l1_coefficient == 0.01
    assert sae.cfg.padding == "circular" and sae.cfg.cos_coefficient == 0.1  # from run1
    assert meta["train_config"]["preset"] == "run1" and meta["train_config"]["window"] == 16
    assert meta["train_config"]["lr"] == 3e-4 and meta["layer"] == 19


def test_toml_config_with_cli_overrides_and_resume(tiny_cache_path, tmp_path):
    out = tmp_path / "toml-run"
    config = tmp_path / "train.toml"
    config.write_text(
        f'cache = "{tiny_cache_path}"\nout = "{out}"\narch = "topk"\nd_sae = 48\nsteps = 8\nwindow = 16\n'
        "batch_windows = 4\nholdout_fraction = 0.1\neval_every = 4\ncheckpoint_every = 4\n\n"
        "[arch_config]\nk = 6\ndead_tokens_threshold = 64\n"
    )
    result = invoke("--config", config, "--k", 4, "--no-progress")
    assert result.exit_code == 0, result.output
    sae, meta = load_checkpoint(out / "final")
    assert sae.cfg.k == 4 and sae.cfg.dead_tokens_threshold == 64 and sae.cfg.d_sae == 48
    assert meta["steps"] == 8 and meta["tokens_seen"] == 8 * 4 * 16
    records = read_log(out / "log.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 9))

    again = invoke("--config", config, "--k", 4, "--no-progress")
    assert again.exit_code == 1 and "--resume" in again.stderr
    finished = invoke("--config", config, "--k", 4, "--no-progress", "--resume")
    assert finished.exit_code == 1 and "already finished" in finished.stderr
    forced = invoke("--config", config, "--k", 4, "--no-progress", "--force", "--steps", 5)
    assert forced.exit_code == 0, forced.output
    assert load_checkpoint(out / "final").metadata["steps"] == 5


@pytest.mark.parametrize(
    "args,message",
    [
        (["--arch", "nope"], "unknown --arch 'nope'; choose one of: batchtopk"),
        (["--arch", "TopK"], "unknown --arch 'TopK' (did you mean 'topk'?)"),
        (["--layer", "7"], "layer 7 is not in cache"),
        (["--preset", "run9"], "unknown preset 'run9' (did you mean 'run3'?); choose one of: run0 = per-token"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--train-tokens", "10"], "0 steps would be trained"),
        (["--dilations", "1,x"], "--dilations takes comma-separated integers"),
        (["--arch-option", "oops"], "--arch-option takes KEY=VALUE"),
        (["--arch", "relu", "--k", "4"], "--k (arch option 'k') does not apply to --arch relu, whose options are "
                                         "dead_tokens_threshold, l1_coefficient; drop it, or use an architecture that "
                                         "has it: batchtopk, mtsae, topk"),
        (["--preset", "run0", "--arch", "mtsae"], "conflicts with --preset run0"),
        (["--lr-decay", "exp"], "--lr-decay must be one of"),
    ],
)
def test_bad_inputs_are_one_line_errors(tiny_cache_path, tmp_path, args, message):
    result = invoke("--cache", tiny_cache_path, "--out", tmp_path / "bad", *SMALL, *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr, result.stderr
    assert "SAEConfig" not in result.stderr  # no internal class names
    assert not (tmp_path / "bad" / "final").exists()


def test_missing_or_incomplete_cache_and_bad_config_files(tmp_path):
    result = invoke("--cache", tmp_path / "nowhere", "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 1 and result.stderr.startswith("error: no mtsae cache at")
    result = invoke("--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 1 and "--cache is required" in result.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('cache = "x"\nlearning_rate = 1\n')
    result = invoke("--config", bad)
    assert result.exit_code == 1 and "unknown training option(s) ['learning_rate']" in result.stderr
    bad.write_text("cache = \n")
    result = invoke("--config", bad)
    assert result.exit_code == 1 and "is not valid TOML" in result.stderr
    result = invoke("--config", tmp_path / "absent.toml")
    assert result.exit_code == 1 and "cannot read config file" in result.stderr

    from mtsae.cache import CacheWriter

    make = CacheWriter.create
    writer = make(str(tmp_path / "unfinished"), layers=[19], d_model=4, dtype_name="float32", capacity_tokens=8,
                  chunk_tokens=4, header={"fingerprint": "0" * 64, "layers": [19], "d_model": 4, "dtype": "float32"})
    writer.abort()
    result = invoke("--cache", tmp_path / "unfinished", "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 1 and "is incomplete" in result.stderr


def test_config_precedence_preset_then_file_then_command_line(tmp_path):
    cfg = TrainConfig(preset="run2", d_sae=512)
    assert (cfg.arch, cfg.d_sae, cfg.lr, cfg.window, cfg.layer, cfg.stride, cfg.batch_windows) == (
        "mtsae", 512, 3e-4, 128, 19, 128, 32)
    assert cfg.arch_config == {"dilations": [1, 3, 9], "cos_coefficient": 0.2, "l1_coefficient": 0.08,
                               "padding": "replicate", "gate_init": 1.0, "temporal_loss": "separation",
                               "temporal_loss_scale": "raw"}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig().arch == "mtsae" and TrainConfig(window=8).batch_windows == 512

    path = tmp_path / "cfg.toml"
    path.write_text('preset = "run1"\nwindow = 32\nsteps = 10\n[arch_config]\nl1_coefficient = 0.5\n')
    cfg = load_config(path, {"window": 8, "train_tokens": 1000, "arch_config": {"cos_coefficient": 0.3}, "lr": None})
    assert cfg.window == 8 and cfg.train_tokens == 1000 and cfg.steps is None  # the CLI budget replaces the file's
    assert cfg.arch_config["l1_coefficient"] == 0.5 and cfg.arch_config["cos_coefficient"] == 0.3
    assert cfg.arch_config["dilations"] == [1, 2, 4] and cfg.lr == 3e-4  # from run1


def test_a_second_train_into_the_same_out_is_one_line_and_the_first_run_stays_whole(tiny_cache_path, tmp_path, monkeypatch):
    """Two trainings into one --out used to run side by side: run.json of one seed, checkpoints of the other."""
    from mtsae.train import trainer as trainer_module

    out = tmp_path / "shared-out"
    common = ["--cache", tiny_cache_path, "--arch", "relu", "--d-sae", 16, "--steps", 4, "--checkpoint-every", 2,
              "--out", out, *SMALL]
    second: list = []
    real_prepare = trainer_module.Trainer._prepare_run_dir

    def start_another_then_prepare(self):
        if not second:  # the first run holds --out but has written nothing yet: a second one (another seed) starts
            second.append(invoke(*common, "--seed", 7))
        return real_prepare(self)

    monkeypatch.setattr(trainer_module.Trainer, "_prepare_run_dir", start_another_then_prepare)
    first = invoke(*common, "--seed", 1)
    assert first.exit_code == 0, first.output
    assert second[0].exit_code == 1
    assert second[0].output.strip().splitlines() == [
        f"error: another mtsae train is writing {out}; wait for it to finish or choose another --out"]
    assert load_checkpoint(out / "final").metadata["train_config"]["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "final", "log.jsonl", "run.json"]  # no lock left


def test_force_keeps_the_run_directory_locked(tiny_cache_path, tmp_path, monkeypatch):
    """--force empties --out but keeps the lock file it holds, so a third run cannot slip in."""
    from mtsae.train import trainer as trainer_module

    out = tmp_path / "forced"
    common = ["--cache", tiny_cache_path, "--arch", "relu", "--d-sae", 16, "--steps", 2, "--out", out, *SMALL]
    assert invoke(*common).exit_code == 0
    seen: list = []
    real_step = trainer_module.Trainer.train_step

    def step_then_look(self, x):
        if not seen:
            seen.append(sorted(p.name for p in out.iterdir()))
            seen.append(invoke(*common, "--force", "--seed", 3))
        return real_step(self, x)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_look)
    assert invoke(*common, "--force").exit_code == 0
    assert RUN_LOCK in seen[0] and "final" not in seen[0]
    assert seen[1].exit_code == 1 and "another mtsae train is writing" in seen[1].output


def test_a_run_started_under_another_default_padding_is_not_resumed_as_causal(tiny_cache_path, tmp_path):
    """A run begun when MTSAE's default padding was circular: its checkpoint says so; resuming it under
    today's causal default would give its weights another meaning, so it is refused with the way out."""
    import json

    from mtsae.train.trainer import Trainer

    out = tmp_path / "old-default"
    cfg = load_config(None, {"cache": str(tiny_cache_path), "out": str(out), "arch": "mtsae", "d_sae": 32,
                             "steps": 4, "window": 16, "batch_windows": 4, "eval_every": 0, "checkpoint_every": 2,
                             "holdout_fraction": 0.1, "arch_config": {"mixer": "conv"}})  # the seed's conv mixer
    Trainer(cfg, progress=False, log=lambda _l: None).fit(stop_at=2)
    saved = out / "checkpoints" / "step_000002" / "cfg.json"
    written = json.loads(saved.read_text())
    assert written["mtsae"]["config"]["padding"] == "causal"
    written["mtsae"]["config"]["padding"] = "circular"  # what the older default wrote
    saved.write_text(json.dumps(written))
    args = ["--cache", tiny_cache_path, "--out", out, "--arch", "mtsae", "--d-sae", 32, "--steps", 4, "--window", 16,
            "--batch-windows", 4, "--eval-every", 0, "--checkpoint-every", 2, "--holdout-fraction", 0.1,
            "--no-progress", "--arch-option", 'mixer="conv"']
    refused = invoke(*args, "--resume")
    assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "its SAE was built with {'padding': 'circular'}" in refused.stderr
    assert '--arch-option padding="circular"' in refused.stderr
    restarted = invoke(*args, "--force", "--arch-option", 'padding="circular"')
    assert restarted.exit_code == 0, restarted.output
    assert load_checkpoint(out / "final").sae.cfg.padding == "circular"
