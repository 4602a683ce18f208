"""`mtsae train --wandb PROJECT`: the run's metrics, config and final checkpoint reach wandb (offline mode)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtsae.cli import app
from mtsae.errors import MtsaeError
from mtsae.train.config import TrainConfig
from mtsae.train.trainer import read_log, train

TINY = ["--layer", "5", "--arch", "relu", "--d-sae", "32", "--window", "16", "--batch-windows", "8",
        "--steps", "6", "--eval-every", "3", "--eval-tokens", "256", "--no-progress"]


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` transaction log (wandb ships no Python reader for it any more).

    The file is ``:W&B`` + 3 header bytes, then LevelDB log framing (32 KiB blocks; each chunk a
    4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last) around
    ``wandb_internal_pb2.Record`` protobufs — parsed with wandb's own message class.
    """
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, pending, records = header, b"", []
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        pending += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_offline_run_holds_the_log_config_and_final_checkpoint(tiny_cache_path, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--cache", str(tiny_cache_path), "--out", str(out), *TINY,
                                      "--wandb", "mtsae-test"])
    assert result.exit_code == 0, result.output
    [log_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(log_file)
    kinds = [r.WhichOneof("record_type") for r in records]

    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.HasField("history")]
    logged = {}
    for row in history:
        logged.setdefault(row["_step"], {}).update(row)
    expected = read_log(out / "log.jsonl")
    assert {r["split"] for r in expected} == {"train", "heldout"}
    for record in expected:  # every metric of every log.jsonl record, at its step, under its split
        row = logged[record["step"]]
        for key, value in record.items():
            if key not in ("split", "step"):
                assert row[f"{record['split']}/{key}"] == pytest.approx(value), (record["step"], key)

    [run] = [r.run for r in records if r.HasField("run")]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.project == "mtsae-test" and run.display_name == "run"
    assert config["arch"] == "relu" and config["d_sae"] == 32 and config["steps"] == 6
    assert len(config["cache_fingerprint"]) == 64 and config["mtsae_version"]

    [artifact] = [r.artifact for r in records if r.HasField("artifact")]
    assert (artifact.name, artifact.type) == ("run-final", "model")
    assert {c.path for c in artifact.manifest.contents} == {p.name for p in (out / "final").iterdir()}
    assert kinds[-1] == "exit" and [r.exit.exit_code for r in records if r.HasField("exit")] == [0]


def test_no_wandb_import_unless_asked(tiny_cache_path, tmp_path):
    code = (
        "import sys\nfrom mtsae.cli import main\n"
        f"sys.argv = ['mtsae', 'train', '--cache', {str(tiny_cache_path)!r}, '--out', {str(tmp_path / 'run')!r}, "
        f"*{TINY!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\nprint('no wandb')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "no wandb" in done.stdout, done.stderr[-2000:]
    assert (tmp_path / "run" / "final").is_dir() and not (tmp_path / "run" / "wandb").exists()


def test_missing_wandb_stops_before_training(tiny_cache_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    cfg = TrainConfig(cache=str(tiny_cache_path), out=str(tmp_path / "run"), layer=5, arch="relu", d_sae=32,
                      window=16, batch_windows=8, steps=3, wandb="p")
    with pytest.raises(MtsaeError, match="needs the wandb package: pip install wandb"):
        train(cfg, progress=False, log=lambda _line: None)
    assert not (tmp_path / "run").exists()


def test_wandb_is_a_run_control_option():
    """A resumed run may add or drop --wandb; an empty project is refused; TOML/experiment configs take it."""
    base = TrainConfig(cache="c", out="o", arch="relu")
    assert base.same_run(TrainConfig(cache="c", out="o", arch="relu", wandb="proj"))
    assert TrainConfig.from_dict({"cache": "c", "out": "o", "wandb": "proj"}).wandb == "proj"
    with pytest.raises(MtsaeError, match="--wandb takes a wandb project name"):
        TrainConfig(cache="c", out="o", wandb=" ").validate()
