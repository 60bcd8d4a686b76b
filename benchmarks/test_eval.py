"""Evaluation speed targets, each measured side by side with what it beats (pytest-benchmark).

1. Batched evaluation (bench.eval.decode: one `generate` per batch of 32) vs a per-image `generate` loop on
   the built-in captioner (the small random BLIP stands in when the shipped weights are absent) — target ≥ 3×.
2. CLI start-up: `bench --help` vs `python -c "import coremltools"` (what start-up would cost if the CLI
   imported its heavy libraries at top level).

Run: .venv/bin/python -m pytest benchmarks/test_eval.py --benchmark-only   (not part of `make test`)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
N_IMAGES = 32
BATCH_SIZE = 32
THROUGHPUT_TARGET = 3.0
_MIN_SECONDS: dict[str, float] = {}  # filled by the paired benchmarks, compared by the second of each pair


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    import torch

    torch.set_num_threads(1)  # two cores shared by the whole team
    from bench.paths import BUILTIN_CAPTIONER_DIR
    from bench.train.captioner import load_captioner

    if (BUILTIN_CAPTIONER_DIR / "model.safetensors").is_file():
        return load_captioner(BUILTIN_CAPTIONER_DIR)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from eval_fixtures import save_tiny_checkpoint

    return load_captioner(save_tiny_checkpoint(tmp_path_factory.mktemp("bench-eval") / "tiny-random", image_size=64))


@pytest.fixture(scope="module")
def images():
    try:
        from bench.data.base import open_dataset

        return [sample.load_image() for sample in open_dataset("synthetic", split="test", limit=N_IMAGES)]
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from eval_fixtures import shape_image

        return [shape_image(i, size=96) for i in range(N_IMAGES)]


def per_image_loop(captioner, images):
    """The naive evaluation: preprocess and `generate` one image at a time."""
    import torch

    captions = []
    for image in images:
        with torch.inference_mode():
            ids = captioner.model.generate(
                pixel_values=captioner.preprocess([image]), max_length=captioner.decode.max_length,
                num_beams=1, do_sample=False,
            )
        captions.append(captioner.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return captions


def batched(captioner, images):
    from bench.eval.decode import DecodeOptions, decode_images

    return [out.caption for out in decode_images(captioner, images, DecodeOptions(batch_size=BATCH_SIZE)).outputs]


@pytest.mark.benchmark(group="eval-throughput")
def test_per_image_generate_loop(benchmark, captioner, images):
    captions = benchmark.pedantic(per_image_loop, args=(captioner, images), rounds=3, iterations=1, warmup_rounds=1)
    assert len(captions) == len(images)
    _MIN_SECONDS["loop"] = benchmark.stats.stats.min
    benchmark.extra_info["images_per_second"] = len(images) / benchmark.stats.stats.min
    benchmark.extra_info["captioner"] = captioner.name


@pytest.mark.benchmark(group="eval-throughput")
def test_batched_evaluation(benchmark, captioner, images):
    captions = benchmark.pedantic(batched, args=(captioner, images), rounds=3, iterations=1, warmup_rounds=1)
    assert captions == per_image_loop(captioner, images)  # same captions, only faster
    fastest = benchmark.stats.stats.min
    benchmark.extra_info["images_per_second"] = len(images) / fastest
    benchmark.extra_info["captioner"] = captioner.name
    if "loop" not in _MIN_SECONDS:
        _MIN_SECONDS["loop"] = min(_timed(per_image_loop, captioner, images) for _ in range(2))
    ratio = _MIN_SECONDS["loop"] / fastest
    benchmark.extra_info["speedup_vs_per_image_loop"] = ratio
    print(f"\nbatched {len(images) / fastest:.1f} img/s vs per-image loop {len(images) / _MIN_SECONDS['loop']:.1f} img/s: {ratio:.1f}x")
    assert ratio >= THROUGHPUT_TARGET


def _timed(function, *args) -> float:
    import time

    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


@pytest.mark.benchmark(group="cli-startup")
def test_import_coremltools(benchmark):
    benchmark.pedantic(_run, args=([str(VENV_BIN / "python"), "-c", "import coremltools"],), rounds=2, iterations=1)
    _MIN_SECONDS["coremltools"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="cli-startup")
def test_bench_help(benchmark):
    benchmark.pedantic(_run, args=([str(VENV_BIN / "bench"), "--help"],), rounds=5, iterations=1, warmup_rounds=1)
    fastest = benchmark.stats.stats.min
    if "coremltools" not in _MIN_SECONDS:
        _MIN_SECONDS["coremltools"] = _timed(_run, [str(VENV_BIN / "python"), "-c", "import coremltools"])
    ratio = _MIN_SECONDS["coremltools"] / fastest
    benchmark.extra_info["faster_than_import_coremltools"] = ratio
    print(f"\nbench --help {fastest:.3f} s vs import coremltools {_MIN_SECONDS['coremltools']:.2f} s: {ratio:.0f}x")
    assert fastest < 1.0  # "instant"
    assert ratio >= 5.0
