"""Side-by-side benchmarks of mtsae (docs/benchmarks.md): harvest, train step, loader, memory.

Run from the repository root: ``python -m benchmarks.run --profile cpu`` (or
``bash benchmarks/cpu.sh``); ``bash benchmarks/gpu.sh`` on a CUDA box.
"""
