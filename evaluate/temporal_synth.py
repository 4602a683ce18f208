"""Temporal vs per-token SAEs on `mtsae synth` regimes, at matched L0, over several seeds.

``mtsae experiment temporal-synth`` (a ``[temporal_synth]`` table of :class:`Budget` sizes in an
experiment TOML changes them), or ``python -m mtsae.evaluate.temporal_synth --out DIR`` (``--help``).

Regimes (``mtsae synth`` settings):

- ``strong``: every feature equally visible from one token (per-token SNR ≈ 2.5);
  pooling has little to add.
- ``weak-slow``: features with a mean dwell ≥ 32 tokens have their magnitude
  scaled by 0.5 (per-token SNR ≈ 1.4, ≈ 1.8 averaged over 33 tokens).

Every model has L0 = ``k`` by construction (TopK-style codes). Per-token
baselines train on **shuffled tokens** (independent samples per step: their
best setting; contiguous windows cost them 7–10 points); temporal models on
contiguous windows. Scoring on **fresh sequences** from the same features:

- decoder: the fraction of true features whose best decoder cosine is ≥ 0.9;
- codes: each true feature is matched to its best-cosine latent; that latent
  "fires" where its code is > 0. Recall, false-positive rate and F1 of firing
  against the truth's "on", averaged per time-scale bucket.

The verdict per regime compares the best temporal model with the best
per-token one (by slow-feature recovery) and is refused when the difference of
seed means is inside the seed spread (sum of the two sample standard deviations).
Training is a plain Adam loop over in-memory data (the SAE classes, losses and
constraints of ``mtsae train``; inputs normalised to E‖x‖ = √d), so the whole
comparison runs in minutes on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtsae.errors import MtsaeError
from mtsae.evaluate.rng import seeded
from mtsae.evaluate.seed_verdict import compare_seeds, mean_and_std
from mtsae.harvest.synth import GroundTruth, SynthConfig, make_ground_truth, sample_codes
from mtsae.train.registry import create_sae, get_architecture
from mtsae.values import same_kind

REGIMES = {"strong": {"slow_scale": 1.0}, "weak-slow": {"slow_scale": 0.5}}
# Smaller than the `mtsae synth` defaults so that 3 seeds x 2 regimes x 4 models train in minutes on 2 cores:
# 128 features in d 32, truth L0 ~5; per-token SNR ~2.5 for every feature (strong), ~1.4 for slow ones (weak-slow).
SYNTH = {"d_model": 32, "n_features": 128, "min_dwell": 1.0, "max_dwell": 128.0, "p_active": 0.04, "noise": 0.05}
# (name, lower bound inclusive, upper bound exclusive) on the mean dwell, in tokens
BUCKETS = (("1-token (<2)", 0.0, 2.0), ("medium (2-32)", 2.0, 32.0), ("slow (32-128)", 32.0, np.inf))
SLOW = BUCKETS[-1][0]
FAST = BUCKETS[0][0]


@dataclass(frozen=True)
class Model:
    name: str
    arch: str
    options: dict[str, Any]
    temporal: bool
    windows: bool | None = None
    """Train on contiguous windows (default: temporal models do, per-token ones see shuffled tokens)."""

    @property
    def on_windows(self) -> bool:
        return self.temporal if self.windows is None else self.windows


def models(k: int) -> list[Model]:
    bank = {"mixer": "bank", "activation": "topk", "k": k, "widths": (1, 9, 33), "cos_coefficient": 0.0}
    return [
        Model("topk (shuffled tokens)", "topk", {"k": k}, False),
        Model("topk (contiguous windows)", "topk", {"k": k}, False, windows=True),
        Model("mtsae conv, topk, gate 0, causal", "mtsae",
              {"activation": "topk", "k": k, "dilations": (1, 3, 9), "padding": "causal", "kernel_size": 3,
               "cos_coefficient": 0.0, "gate_init": 0.0}, True),
        Model("mtsae bank 1/9/33 causal", "mtsae", {**bank, "padding": "causal"}, True),
        Model("mtsae bank 1/9/33 centred", "mtsae", {**bank, "padding": "zeros"}, True),
    ]


@dataclass(frozen=True)
class Budget:
    """The benchmark's sizes. The defaults are the run docs/results.md measured: all five models, 2 regimes,
    3 seeds in 4 min 36 s on a quiet 2-core CPU (18 + 6 min on the loaded one; the issue's budget: 30 min)."""

    seeds: int = 3
    k: int = 5  # L0 of every model
    d_sae: int = 256
    steps: int = 400
    batch_tokens: int = 2048
    window: int = 64  # the temporal models' training windows
    lr: float = 3e-3
    train_sequences: int = 400
    eval_sequences: int = 40
    seq_len: int = 256
    only: tuple[str, ...] = ()  # train only these models (names of `models`); () = all

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Budget:
        """From an experiment's ``[temporal_synth]`` table: unknown keys and values of the wrong kind refused."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - set(defaults))
        if unknown:
            raise MtsaeError(f"unknown [temporal_synth] key(s) {unknown}; valid keys: {sorted(defaults)}")
        for key, value in table.items():
            if not same_kind(value, defaults[key]) or (key == "only" and not all(isinstance(v, str) for v in value)):
                kind = {"only": "a list of model names", "lr": "a number"}.get(key, "a whole number")
                raise MtsaeError(f"[temporal_synth] {key} = {value!r} should be {kind} like {defaults[key]!r}; "
                                 "fix the value")
        budget = cls(**{**table, "only": tuple(table.get("only", ()))})
        budget.validate()
        return budget

    def validate(self) -> None:
        names = [m.name for m in models(self.k)]
        checks = [
            (self.seeds >= 2, f"[temporal_synth] seeds must be >= 2 (a verdict needs a seed spread), got {self.seeds}"),
            (min(self.steps, self.train_sequences, self.eval_sequences) >= 1,
             "[temporal_synth] steps, train_sequences and eval_sequences must be >= 1"),
            (2 <= self.window <= self.seq_len,
             f"[temporal_synth] need 2 <= window <= seq_len, got window {self.window}, seq_len {self.seq_len}"),
            (self.batch_tokens >= self.window,
             f"[temporal_synth] batch_tokens ({self.batch_tokens}) must hold at least one window ({self.window})"),
            (0 < self.lr < math.inf, f"[temporal_synth] lr must be a positive finite number, got {self.lr}"),
            (set(self.only) <= set(names), f"[temporal_synth] only names unknown model(s) "
             f"{sorted(set(self.only) - set(names))}; models: {names}"),
        ]
        for ok, message in checks:
            if not ok:
                raise MtsaeError(message)
        for model in models(self.k):  # k against d_sae and the bank's groups: the SAEs' own checks, before training
            get_architecture(model.arch).config_class.from_dict(
                {"d_in": SYNTH["d_model"], "d_sae": self.d_sae, **model.options})

    def run_arguments(self) -> dict[str, Any]:
        """Keyword arguments of :func:`run`."""
        return {**dataclasses.asdict(self), "only": list(self.only) or None}


def make_data(truth: GroundTruth, cfg: SynthConfig, n_seq: int, seq_len: int, rng: np.random.Generator):
    codes = sample_codes(truth, n_seq, seq_len, rng)
    x = codes @ truth.features + cfg.noise * rng.standard_normal((n_seq, seq_len, cfg.d_model))
    return torch.from_numpy(x.astype(np.float32)), codes


def per_token_snr(x_BTD: torch.Tensor, codes_BTG: np.ndarray, truth: GroundTruth, width: int = 1) -> np.ndarray:
    """[G]: (mean projection when on − when off) / std when off, of x·f_g averaged over ``width`` trailing tokens."""
    from mtsae.train.temporal import moving_average

    proj = moving_average(x_BTD.double() @ torch.from_numpy(truth.features.T).double(), width, "causal").numpy()
    on = codes_BTG > 0
    snr = np.full(on.shape[-1], np.nan)  # a feature never on (or always on) in the sample has none
    for g in range(on.shape[-1]):
        p, a = proj[..., g], on[..., g]
        if a.any() and (~a).any():
            snr[g] = (p[a].mean() - p[~a].mean()) / max(p[~a].std(), 1e-12)
    return snr


def train_one(model: Model, x_train: torch.Tensor, *, d_sae: int, steps: int, batch_tokens: int, window: int,
              lr: float, seed: int) -> torch.nn.Module:
    with seeded(seed):  # the SAE's initialisation; the caller's global generators are given back
        sae = create_sae(model.arch, d_in=x_train.shape[-1], d_sae=d_sae, **model.options).train()
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        n_seq, seq_len, d = x_train.shape
        flat = x_train.reshape(-1, d)
        for step in range(steps):
            for group in opt.param_groups:  # linear decay to 0 over the last 20 %, as mtsae train
                group["lr"] = lr * min(1.0, (steps - step) / (0.2 * steps))
            if model.on_windows:
                b = batch_tokens // window
                rows = torch.randint(n_seq, (b,), generator=gen)
                starts = torch.randint(seq_len - window + 1, (b,), generator=gen)
                x = torch.stack([x_train[r, s:s + window] for r, s in zip(rows.tolist(), starts.tolist())])
            else:
                x = flat[torch.randint(flat.shape[0], (batch_tokens,), generator=gen)]
            out = sae.loss(x)
            opt.zero_grad()
            out.loss.backward()
            sae.remove_parallel_gradient_()
            opt.step()
            sae.constrain_parameters_()
        return sae.eval()


def bucket_of(dwell: np.ndarray) -> list[np.ndarray]:
    return [(dwell >= lo) & (dwell < hi) for _, lo, hi in BUCKETS]


@torch.no_grad()
def score(sae, x_eval: torch.Tensor, codes_eval: np.ndarray, truth: GroundTruth) -> dict[str, Any]:
    """Decoder recovery and code recall / FPR / F1 per bucket on fresh sequences, plus FVE and L0."""
    enc = sae.encode(x_eval) if sae.is_temporal else sae.encode(x_eval.reshape(-1, x_eval.shape[-1]))
    codes = enc.reshape(-1, enc.shape[-1]).numpy()
    recon = sae.decode(torch.from_numpy(codes)).numpy()
    x = x_eval.reshape(-1, x_eval.shape[-1]).numpy()
    fve = 1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    dec = sae.W_dec.numpy() / np.linalg.norm(sae.W_dec.numpy(), axis=1, keepdims=True)
    cos = truth.features @ dec.T  # [G, F]
    best, match = cos.max(1), cos.argmax(1)
    fires = codes[:, match] > 0  # [N, G]
    true_on = codes_eval.reshape(-1, codes_eval.shape[-1]) > 0
    tp = (fires & true_on).sum(0)
    fp = (fires & ~true_on).sum(0)
    fn = (~fires & true_on).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a feature never on in the sample: undefined, left out
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        fpr = np.where((~true_on).sum(0) > 0, fp / (~true_on).sum(0), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    result = {"fve": float(fve), "l0": float((codes > 0).sum(1).mean()), "buckets": {}}
    for (name, _, _), mask in zip(BUCKETS, bucket_of(truth.dwell)):
        result["buckets"][name] = {"n": int(mask.sum()), "recovered": float((best[mask] >= 0.9).mean()),
                                   "recall": float(np.nanmean(recall[mask])), "fpr": float(np.nanmean(fpr[mask])),
                                   "f1": float(np.nanmean(f1[mask]))}
    return result


def run(out: Path, *, seeds: int, only: list[str] | None = None, k: int, d_sae: int, steps: int, batch_tokens: int, window: int, lr: float,
        train_sequences: int, eval_sequences: int, seq_len: int, log=print) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"settings": {"seeds": seeds, "k": k, "d_sae": d_sae, "steps": steps,
                                            "batch_tokens": batch_tokens, "window": window, "lr": lr,
                                            "train_sequences": train_sequences, "eval_sequences": eval_sequences,
                                            "seq_len": seq_len, "only": only or [],
                                            "synth": SYNTH, "regimes": REGIMES}, "regimes": {}}
    for regime, overrides in REGIMES.items():
        chosen = [m for m in models(k) if only is None or m.name in only]
        per_model: dict[str, list] = {m.name: [] for m in chosen}
        snr = {}
        for seed in range(seeds):
            cfg = SynthConfig(**SYNTH, **overrides, seed=seed)
            rng = np.random.default_rng(seed)
            truth = make_ground_truth(cfg, rng)
            x_train, _ = make_data(truth, cfg, train_sequences, seq_len, rng)
            x_eval, codes_eval = make_data(truth, cfg, eval_sequences, seq_len, rng)
            scale = float(np.sqrt(cfg.d_model) / x_train.norm(dim=-1).mean())  # E‖x‖ = √d, as mtsae train
            if seed == 0:
                snr = {f"width {w}": _bucket_means(per_token_snr(x_eval, codes_eval, truth, w), truth)
                       for w in (1, 9, 33)}
            for model in chosen:
                sae = train_one(model, x_train * scale, d_sae=d_sae, steps=steps, batch_tokens=batch_tokens,
                                window=window, lr=lr, seed=seed)
                per_model[model.name].append(score(sae, x_eval * scale, codes_eval, truth))
                log(f"[{time.monotonic() - started:6.0f}s] {regime} seed {seed} {model.name}: "
                    f"slow {per_model[model.name][-1]['buckets'][SLOW]['recovered']:.2f}")
        decidable = any(m.temporal for m in chosen) and not all(m.temporal for m in chosen)
        results["regimes"][regime] = {"snr": snr, "models": per_model,
                                      "verdict": verdict(per_model, k) if decidable else None}
    results["seconds"] = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    from mtsae.evaluate.temporal_synth_report import write_report  # it reads this module's buckets

    write_report(results, out)
    return results


def _bucket_means(values: np.ndarray, truth: GroundTruth) -> dict[str, float]:
    return {name: float(np.nanmean(values[mask])) for (name, _, _), mask in zip(BUCKETS, bucket_of(truth.dwell))}


def _seed_values(runs: list[dict], bucket: str | None, metric: str) -> list[float]:
    return [r[metric] if bucket is None else r["buckets"][bucket][metric] for r in runs]


def stat(runs: list[dict], bucket: str | None, metric: str) -> tuple[float, float]:
    """(mean, sample std) over seeds of one metric (a bucket's, or a top-level one when bucket is None)."""
    return mean_and_std(_seed_values(runs, bucket, metric))


def compare(a: list[dict], b: list[dict], bucket: str | None, metric: str) -> dict[str, Any]:
    return compare_seeds(_seed_values(a, bucket, metric), _seed_values(b, bucket, metric))


def verdict(per_model: dict[str, list], k: int) -> dict[str, Any]:
    """Best temporal vs best per-token model (by mean slow recovery); each comparison decided only outside the spread."""
    temporal = {m.name for m in models(k) if m.temporal}
    best = lambda names: max(names, key=lambda n: stat(per_model[n], SLOW, "recovered")[0])  # noqa: E731
    t = best([n for n in per_model if n in temporal])
    b = best([n for n in per_model if n not in temporal])
    checks = {f"{bucket} {metric}": compare(per_model[t], per_model[b], bucket, metric)
              for bucket in (SLOW, BUCKETS[1][0], FAST) for metric in ("recovered", "f1", "fpr")}
    checks["fve"] = compare(per_model[t], per_model[b], None, "fve")
    slow, f1, fast = checks[f"{SLOW} recovered"], checks[f"{SLOW} f1"], checks[f"{FAST} recovered"]
    target = {
        "slow recovery >= +10 points, outside the spread": slow["decided"] and slow["difference"] >= 0.10,
        "slow code F1 higher, outside the spread": f1["decided"] and f1["difference"] > 0,
        "1-token recovery loses <= 5 points": fast["difference"] >= -0.05,
    }
    return {"temporal": t, "baseline": b, "checks": checks, "target": target}


def experiment(table: dict[str, Any], out: Path, log=print) -> dict[str, Any]:
    """`mtsae experiment` with a ``[temporal_synth]`` table: the benchmark into ``out`` (results.json, report.md,
    report.html); when ``out`` already holds the results of these settings, only the report is written again."""
    from mtsae.evaluate.temporal_synth_report import write_report

    budget = Budget.from_table(table)
    done = finished_results(out / "results.json", budget)
    if done is not None:
        log(f"[experiment] {out / 'results.json'} holds these settings' results: not re-run, report rewritten")
        write_report(done, out)
        return done
    log(f"[experiment] temporal benchmark on synthetic data: {len(REGIMES)} regimes x {budget.seeds} seeds")
    with one_thread():
        return run(out, **budget.run_arguments(), log=log)


def finished_results(path: Path, budget: Budget) -> dict[str, Any] | None:
    """The results in ``path`` when they were produced with ``budget`` and this module's data settings, else None."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    settings = results.get("settings") if isinstance(results, dict) else None
    if not isinstance(settings, dict) or not isinstance(results.get("regimes"), dict):
        return None
    wanted = json.loads(json.dumps({**dataclasses.asdict(budget), "synth": SYNTH, "regimes": REGIMES}))
    names = [m.name for m in models(budget.k) if not budget.only or m.name in budget.only]
    same_models = all(isinstance(r, dict) and list(r.get("models", ())) == names for r in results["regimes"].values())
    return results if same_models and all(settings.get(key) == value for key, value in wanted.items()) else None


@contextmanager
def one_thread():
    """Train on one torch thread, as the measured runs did; the process's thread count is given back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="experiments/temporal-synth")
    for f in dataclasses.fields(Budget):
        if f.name != "only":
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--only", action="append", default=[], help="train only this model (repeatable; default: all)")
    given = vars(p.parse_args(argv))
    out = Path(given.pop("out"))
    try:
        budget = Budget.from_table(given)
    except MtsaeError as exc:
        p.error(str(exc))
    with one_thread():
        run(out, **budget.run_arguments())
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
