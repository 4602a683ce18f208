"""The fused Triton temporal mixing against the PyTorch path (forward, gradients, running statistics).

On a CUDA machine the kernels are compiled and run on the GPU, in this process.
Without one they run on CPU tensors in Triton's interpreter, which must be
switched on (``TRITON_INTERPRET=1``) before triton itself is imported: so every
case runs in one child process with that variable set, and each parametrized
test checks its own case's outcome. The interpreter is slow: shapes are tiny —
5 features in one 8-wide tile (a partial tile) and 4-step time tiles, so the
windows longer than 4 cross a tile edge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtsae.train.temporal import TemporalMixer, temporal_mix

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' brings it)")

CUDA = torch.cuda.is_available()
BLOCK_T, BLOCK_F = 4, 8

# (padding, dilations, kernel_size, T): centred and causal taps, offsets beyond the window
# (replicate clamps them, circular wraps them more than once), a single step (the [N, d] path).
CASES = [
    ("circular", (1, 4), 3, 7),
    ("circular", (3, 9), 3, 5),
    ("replicate", (1, 3), 3, 6),
    ("replicate", (2, 5), 3, 4),
    ("zeros", (3,), 5, 7),
    ("zeros", (1, 2), 3, 1),
    ("causal", (1, 2), 2, 5),
    ("causal", (2,), 4, 6),
]
# Eval mode (running statistics) only changes the BatchNorm constants: two cases are enough.
RUNS = [(case, True) for case in CASES] + [(CASES[0], False), (CASES[2], False)]


def _case_id(case, training) -> str:
    padding, dilations, kernel_size, T = case
    return f"{padding}-d{'.'.join(map(str, dilations))}-k{kernel_size}-t{T}-{'train' if training else 'eval'}"


@pytest.fixture(scope="module")
def fused():
    import mtsae.train.temporal_triton as module

    return module


@pytest.fixture(scope="module")
def interpreted_outcomes():
    """Run every case once in a child process under TRITON_INTERPRET=1: ``{case id: None or the failure}``."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import json, {Path(__file__).stem} as t; " \
           "print('OUTCOMES' + json.dumps(t.compare_all_cases()))"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("OUTCOMES")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("OUTCOMES"):])


def _state(R: int, F: int, K: int, device: str, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(R, F, K, generator=g),  # conv weight
        1 + 0.3 * torch.randn(R, F, generator=g),  # BN weight
        0.3 * torch.randn(R, F, generator=g),  # BN bias
        0.2 * torch.randn(R, F, generator=g),  # running mean
        0.5 + torch.rand(R, F, generator=g),  # running var
    ]
    return [t.to(device) for t in tensors]


def _forward_backward(mix, pre, state, **kwargs):
    """Output, running statistics after the call, and gradients of a random projection of the output."""
    pre = pre.clone().requires_grad_(True)
    params = [t.clone().requires_grad_(True) for t in state[:3]]
    running = [t.clone() for t in state[3:]]
    out = mix(pre, *params, *running, **kwargs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device)
    (out.float() * upstream).sum().backward()
    return {
        "out": out.detach().float(),
        "running_mean": running[0],
        "running_var": running[1],
        "d_pre": pre.grad.float(),
        "d_conv_weight": params[0].grad,
        "d_bn_weight": params[1].grad,
        "d_bn_bias": params[2].grad,
    }


def _assert_match(got: dict, want: dict, atol: float, rtol: float) -> None:
    for name, expected in want.items():
        torch.testing.assert_close(got[name], expected, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def compare_case(case, training, device: str, tiles: dict | None = None, gate: float | None = None) -> None:
    """Raise AssertionError naming the first quantity where the fused kernels and temporal_mix differ.

    ``gate``: every BatchNorm γ set to this value (0: the MTSAE's closed gate at initialisation).
    """
    from mtsae.train.temporal_triton import fused_temporal_mix

    padding, dilations, kernel_size, T = case
    B, F = (3, 5) if T == 1 else (2, 5)
    pre = 1.5 * torch.randn(B, T, F, generator=torch.Generator().manual_seed(T)).to(device) + 0.5
    state = _state(len(dilations), F, kernel_size, device, seed=len(dilations) * 10 + kernel_size)
    if gate is not None:
        state[1] = torch.full_like(state[1], gate)
    kwargs = dict(dilations=dilations, padding=padding, training=training, momentum=0.3, eps=1e-5)
    tiles = dict(block_t=BLOCK_T, block_f=BLOCK_F) if tiles is None else tiles
    want = _forward_backward(temporal_mix, pre, state, **kwargs)
    got = _forward_backward(fused_temporal_mix, pre, state, **tiles, **kwargs)
    _assert_match(got, want, atol=2e-5, rtol=1e-4)


def compare_all_cases() -> dict[str, str | None]:
    """Every (case, mode) on CPU; run by :func:`interpreted_outcomes` in the interpreter child."""
    outcomes = {}
    for case, training in RUNS:
        try:
            compare_case(case, training, "cpu")
            outcomes[_case_id(case, training)] = None
        except AssertionError as exc:
            outcomes[_case_id(case, training)] = str(exc)
    try:  # the closed gate of a fresh MTSAE: output == pre, gradient reaches γ but not the kernels
        compare_case(CASES[6], True, "cpu", gate=0.0)
        outcomes["closed-gate"] = None
    except AssertionError as exc:
        outcomes["closed-gate"] = str(exc)
    outcomes.update(first_use_check_outcomes())
    return outcomes


def first_use_check_outcomes() -> dict[str, str | None]:
    """The CUDA first-use check, run on interpreted kernels: passes as they are, refuses a corrupted copy."""
    import mtsae.train.temporal_triton as module
    from mtsae.errors import MtsaeError

    outcomes: dict[str, str | None] = {}
    try:
        module.check_on_first_use(torch.device("cpu"), "replicate")
        outcomes["first-use-check-passes"] = None
    except MtsaeError as exc:
        outcomes["first-use-check-passes"] = str(exc)
    honest, module._checked_devices = module.fused_temporal_mix, set()
    module.fused_temporal_mix = lambda *args, **kwargs: honest(*args, **kwargs) * 1.01
    try:
        module.check_on_first_use(torch.device("cpu"), "circular")
        outcomes["first-use-check-refuses-a-wrong-kernel"] = "a 1 % error passed the check"
    except MtsaeError as exc:
        ok = "MTSAE_FUSED_TEMPORAL=0" in str(exc) and "\n" not in str(exc)
        outcomes["first-use-check-refuses-a-wrong-kernel"] = None if ok else f"unhelpful message: {exc}"
    finally:
        module.fused_temporal_mix = honest
    return outcomes


@pytest.mark.parametrize("name", ["first-use-check-passes", "first-use-check-refuses-a-wrong-kernel"])
def test_first_use_check_on_interpreted_kernels(interpreted_outcomes, name):
    assert interpreted_outcomes[name] is None, interpreted_outcomes[name]


def test_fused_matches_pytorch_path_with_the_gate_closed(request):
    if CUDA:
        compare_case(CASES[6], True, "cuda", gate=0.0)
        return
    outcome = request.getfixturevalue("interpreted_outcomes")["closed-gate"]
    assert outcome is None, outcome


@pytest.mark.parametrize("case,training", RUNS, ids=[_case_id(*run) for run in RUNS])
def test_fused_matches_pytorch_path(case, training, request):
    if CUDA:
        compare_case(case, training, "cuda")
        return
    outcome = request.getfixturevalue("interpreted_outcomes")[_case_id(case, training)]
    assert outcome is None, outcome


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: compiled kernels, default tiles, bfloat16")
@pytest.mark.parametrize("padding", ["circular", "replicate", "zeros", "causal"])
def test_fused_on_gpu_at_training_shapes(fused, padding):
    """Default tiles, a 128-step window, bfloat16 input (as under autocast) against the float32 PyTorch path."""
    B, T, F, dilations = 8, 128, 1000, (1, 2, 4, 8)
    kernel_size = 2 if padding == "causal" else 3
    pre = torch.randn(B, T, F, device="cuda").bfloat16()
    state = _state(len(dilations), F, kernel_size, "cuda", seed=1)
    kwargs = dict(dilations=dilations, padding=padding, training=True)
    assert fused.fused_temporal_mix(pre, *state, **kwargs).dtype == torch.bfloat16  # the output keeps pre's dtype
    want = _forward_backward(temporal_mix, pre.float(), state, **kwargs)
    got = _forward_backward(fused.fused_temporal_mix, pre, state, **kwargs)
    _assert_match(got, want, atol=5e-2, rtol=2e-2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_mixer_uses_fused_kernel_on_cuda(fused, monkeypatch):
    calls = []
    real = fused.fused_temporal_mix
    monkeypatch.setattr(fused, "fused_temporal_mix", lambda *a, **k: calls.append(1) or real(*a, **k))
    TemporalMixer(16, (1, 2), 3, "circular").cuda()(torch.randn(2, 8, 16, device="cuda"))
    assert calls == [1]
    monkeypatch.setenv("MTSAE_FUSED_TEMPORAL", "0")
    TemporalMixer(16, (1, 2), 3, "circular").cuda()(torch.randn(2, 8, 16, device="cuda"))
    assert calls == [1]


def test_mixer_keeps_pytorch_path_on_cpu(fused, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the fused kernel ran on a CPU tensor")

    monkeypatch.setattr(fused, "fused_temporal_mix", refuse)
    mixer = TemporalMixer(5, (1, 2), 3, "zeros")
    pre = torch.randn(2, 6, 5)
    torch.testing.assert_close(mixer(pre), temporal_mix(pre, mixer.conv_weight, mixer.bn_weight, mixer.bn_bias,
                                                        mixer.bn_running_mean.clone(), mixer.bn_running_var.clone(),
                                                        dilations=(1, 2), padding="zeros", training=True))


def test_fused_available_honours_switch(fused, monkeypatch):
    monkeypatch.setenv("MTSAE_FUSED_TEMPORAL", "0")
    assert not fused.fused_available()
    monkeypatch.setenv("MTSAE_FUSED_TEMPORAL", "1")
    assert fused.fused_available()


def test_fused_rejects_what_the_reference_rejects(fused):
    from mtsae.errors import MtsaeError

    state = _state(1, 4, 2, "cpu", seed=0)
    with pytest.raises(MtsaeError, match="odd"):
        fused.fused_temporal_mix(torch.randn(1, 3, 4), *state, dilations=(1,), padding="zeros", training=True)
