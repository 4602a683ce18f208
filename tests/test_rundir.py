"""train/rundir.py (the one reader and writer of run directories) and train/heldout.py (held-out metrics)."""

from __future__ import annotations

import json

import pytest
import torch

from mtsae.evaluate.report import load_run
from mtsae.train.checkpoint import CFG_FILENAME
from mtsae.train.heldout import heldout_metrics
from mtsae.train.registry import create_sae
from mtsae.train.rundir import FINAL_CFG, RunDir


def test_the_final_cfg_name_is_the_checkpoints():
    assert FINAL_CFG == CFG_FILENAME


def test_log_cuts_keep_what_the_checkpoint_counted(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    log = run.open_log(0)
    for step in range(1, 6):
        log.append({"split": "train", "step": step})
    log.close()
    assert [r["step"] for r in run.read_log()] == [1, 2, 3, 4, 5]
    assert run.cut_log_for({"log_records": 3, "step": 9}) == 3  # by count: what the checkpoint had written
    assert [r["step"] for r in run.read_log()] == [1, 2, 3]
    run.log_file.write_text(run.log_file.read_text() + '{"split": "tr')  # a line cut by a crash
    assert run.cut_log_for({"step": 2}) == 2  # an older checkpoint without the count: by step
    assert [r["step"] for r in run.read_log()] == [1, 2]


def test_temporaries_and_the_lock_do_not_make_a_run(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.path / "checkpoints").mkdir(parents=True)
    (run.path / ".run.json.tmp-abc").write_text("{")
    (run.path / "checkpoints" / ".step_000004.tmp-xyz").mkdir()
    assert run.holds_a_run()  # checkpoints/ itself is a run's
    (run.path / "checkpoints" / ".step_000004.tmp-xyz").rmdir()
    (run.path / "checkpoints").rmdir()
    assert not run.holds_a_run()
    run.create()
    assert list(run.path.iterdir()) == []


def test_report_reads_the_log_through_rundir(tmp_path):
    """report.py had its own log parser, which a blank line (a log cut and resumed) broke."""
    run = RunDir(tmp_path / "run")
    run.create()
    run.write_info({"config": {"arch": "relu", "seed": 0, "layer": 3}, "cache_fingerprint": "f" * 16})
    run.log_file.write_text(json.dumps({"split": "train", "step": 1, "loss": 2.0}) + "\n\n"
                            + json.dumps({"split": "heldout", "step": 1, "fve": 0.5}) + "\n")
    record = load_run(run.path)
    assert record.train_curve == [(1, 2.0)] and record.heldout_fve == [(1, 0.5)] and record.steps == 1
    (run.info_file).write_text("{not json")
    with pytest.raises(Exception, match="not a training run"):
        load_run(run.path)


def _by_hand(sae, x, special):
    """The definitions in train/heldout.py, written out once more over the kept tokens."""
    keep = ~special
    codes = sae.encode(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
    recon = sae.decode(codes.reshape(-1, codes.shape[-1])).reshape(x.shape)
    xs = x[keep].double()
    sse = float((recon[keep].double() - xs).pow(2).sum())
    total = float((xs - xs.mean(0)).pow(2).sum())
    pair = keep[:, :-1] & keep[:, 1:]
    u, v = codes[:, :-1][pair], codes[:, 1:][pair]
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-8)
    return {"mse": sse / len(xs), "fve": 1 - sse / total, "l0": float((codes[keep] != 0).sum()) / len(xs),
            "silent_fraction": 1 - float((codes[keep] != 0).any(0).float().mean()), "sep": float(cos.double().mean()),
            "tokens": len(xs)}


@torch.no_grad()
def test_heldout_metrics_match_their_definitions_and_skip_special_rows():
    torch.manual_seed(0)
    sae = create_sae("relu", d_in=8, d_sae=16, l1_coefficient=0.01).eval()
    x = torch.randn(3, 5, 8)
    special = torch.zeros(3, 5, dtype=torch.bool)
    special[:, 0] = True  # BOS rows
    got = heldout_metrics(sae, [(x[:2], special[:2]), (x[2:], special[2:])])
    want = _by_hand(sae, x, special)
    assert got.keys() == {*want, "dead_fraction"}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    x_changed = x.clone()
    x_changed[special] = 1e6  # what special rows hold never counts
    assert heldout_metrics(sae, [(x_changed, special)]) == heldout_metrics(sae, [(x, special)])
    scaled = heldout_metrics(sae, [(x / 2, special)], scale=2.0)
    assert scaled == heldout_metrics(sae, [(x, special)])
