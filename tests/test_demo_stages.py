"""benchmarks/demo_stages.py: progress lines open the stages it times."""

from __future__ import annotations

from benchmarks.demo_stages import StageClock


def test_progress_lines_open_stages_and_other_lines_do_not():
    clock = StageClock()
    clock.start("harvest (world model, world corpus)")
    for line in ("harvested 252,967 tokens (1,180 sequences, 380 documents) at 902 tokens/s into caches/x",
                 "[experiment] topk: training (topk, preset None)",
                 "trained 1,196,032 tokens at 16,675 tokens/s",
                 "[sparse_probing] running SAE-Bench on 7 SAE(s) with embedded; its own output goes to x/sae_bench.log",
                 "[sparse_probing] 7 SAE(s) in 43 s, of which 19 s before the first SAE was used",
                 "[experiment] mtsae unlearn on 6 run(s) -> experiments/embedded/unlearn",
                 "[experiment] topk: disentanglement analysis",
                 "[experiment] report: experiments/embedded/report/report.html"):
        clock(line)
    rows = clock.rows()
    assert [name for name, _, _ in rows] == ["harvest (world model, world corpus)", "train topk", "eval sparse_probing",
                                             "mtsae unlearn (6 SAEs)", "analyse topk", "report"]
    assert all(wall >= 0 and cpu >= 0 for _, wall, cpu in rows)
