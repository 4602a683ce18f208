"""Memory: peak RSS of `mtsae harvest` at two token budgets 10× apart, each in its own process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.common import Report
from benchmarks.inputs import long_document_corpus, model_dir
from benchmarks.profiles import Profile

NAME = "memory"

# The child harvests and prints its own peak RSS (ru_maxrss is in KiB on Linux).
_CHILD = """
import json, resource, sys
from mtsae.harvest.config import HarvestConfig
from mtsae.harvest.run import harvest
cfg = HarvestConfig(**json.loads(sys.argv[1]))
outcome = harvest(cfg, sys.argv[2], force=True, log=lambda _: None, progress=False)
print("RESULT " + json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                               "tokens": outcome.attrs["counts"]["tokens"]}))
"""


def run(report: Report, profile: Profile, device, work: Path) -> None:
    import torch

    model_path = model_dir(profile.model, work, torch.device(device))
    corpus = long_document_corpus(work / "long-documents.jsonl", 10 * profile.memory_tokens)
    small = peak_rss(model_path, corpus, profile, str(device), profile.memory_tokens, work / "memory-small")
    large = peak_rss(model_path, corpus, profile, str(device), 10 * profile.memory_tokens, work / "memory-large")
    report.add(NAME, f"harvest peak RSS, {small['tokens']:,} tokens", small["peak_rss_bytes"] / 2**20, "MiB")
    report.add(NAME, f"harvest peak RSS, {large['tokens']:,} tokens", large["peak_rss_bytes"] / 2**20, "MiB",
               baseline=f"harvest peak RSS, {small['tokens']:,} tokens")
    growth = large["peak_rss_bytes"] / small["peak_rss_bytes"]
    report.target("memory: peak RSS at 10× tokens / at 1×", growth, 1.10, at_most=True,
                  reason="the peak is set while loading; the loop stages one chunk per array" if growth <= 1.10 else
                  "peak RSS grew with the token budget")


def peak_rss(model_path: Path, corpus: Path, profile: Profile, device: str, tokens: int, out: Path) -> dict:
    cfg = dict(model=str(model_path), dataset=str(corpus), layers=list(profile.layers),
               context_len=profile.context_len, max_tokens=tokens, batch_size=profile.batch_size, device=device,
               attn_implementation=profile.attn_implementation)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg), str(out)],
                          capture_output=True, text=True, timeout=900)
    shutil.rmtree(out, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"harvest child failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])
