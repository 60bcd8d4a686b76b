"""Train the built-in captioner on the synthetic set (models/builtin-captioner/reproduce.sh calls this).

The held-out check here is a plain sacreBLEU corpus score with greedy decoding; the full evaluation with
confidence intervals and records is `bench eval` (bench/eval).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from bench.errors import InputError, did_you_mean
from bench.train.captioner import (
    BUILTIN_ARCHITECTURES,
    BuiltinArchitecture,
    Captioner,
    DecodeConfig,
    Preprocessing,
    new_builtin_model,
    write_builtin_tokenizer,
)
from bench.train.trainer import TrainConfig, TrainResult, train

DATASET_SPEC = "synthetic"
# The shipped recipe: greedy sacreBLEU 57.9 on the 1,000 synthetic test images after 800 steps (0.3 s/step on two idle
# CPU threads, up to 4-5 s/step on a busy shared machine).
DEFAULT_CONFIG = dict(steps=800, batch_size=64, lr=1e-3, warmup_steps=100, weight_decay=0.01, min_lr_ratio=0.02,
                      save_every=100, log_every=50, max_caption_tokens=24)
TRAIN_LIMIT = 20_000


def builtin_architecture(size: str) -> BuiltinArchitecture:
    if size not in BUILTIN_ARCHITECTURES:
        raise did_you_mean("built-in captioner size", size, BUILTIN_ARCHITECTURES)
    return BUILTIN_ARCHITECTURES[size]


def builtin_name(size: str) -> str:
    """The shipped captioner's name (and folder under models/) for an architecture of BUILTIN_ARCHITECTURES."""
    return "builtin-captioner" if size == "base" else f"builtin-captioner-{size}"


def new_builtin_captioner(arch: BuiltinArchitecture, seed: int, workdir: Path,
                          name: str = "builtin-captioner") -> Captioner:
    tokenizer = write_builtin_tokenizer(workdir)
    model = new_builtin_model(arch, tokenizer, seed=seed)
    vocab = tokenizer.get_vocab()
    decode = DecodeConfig(bos_id=vocab["[DEC]"], eos_id=vocab["[SEP]"], pad_id=vocab["[PAD]"],
                          max_length=arch.max_length)
    return Captioner(model=model, tokenizer=tokenizer, image_size=arch.image_size, decode=decode,
                     weights_sha256="", name=name, preprocessing=Preprocessing(arch.image_size),
                     path=workdir)


def train_builtin(
    out_dir: Path | str,
    config: TrainConfig,
    *,
    arch: BuiltinArchitecture = BuiltinArchitecture(),
    name: str = "builtin-captioner",
    train_limit: int | None = TRAIN_LIMIT,
    eval_limit: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train from scratch (seeded), then measure greedy sacreBLEU on the synthetic test split and record it."""
    from bench.data.base import open_dataset
    from bench.train.captioner import load_captioner
    from bench.train.trainer import write_metadata

    config.validate()  # bad settings fail before the dataset is generated
    if eval_limit is not None and eval_limit <= 0:  # read after training: checked before it, not minutes later
        raise InputError(f"eval limit must be a positive number of images, got {eval_limit}")
    out_dir = Path(out_dir)
    dataset = open_dataset(DATASET_SPEC, split="train", limit=train_limit, seed=config.seed)
    with tempfile.TemporaryDirectory(prefix="bench-builtin-") as work:
        captioner = new_builtin_captioner(arch, config.seed, Path(work), name)
        result = train(
            captioner, dataset, out_dir, config,
            base={"kind": "scratch", "id": f"builtin:{arch.recorded()}", "architecture": arch.recorded()},
            name=name, progress=progress, log=log,
        )
    trained = load_captioner(out_dir)
    test = open_dataset(DATASET_SPEC, split="test", limit=eval_limit, seed=0)
    evaluation = greedy_bleu(trained, test)
    metadata = dict(result.metadata)
    metadata["evaluation"] = evaluation
    metadata["weights_sha256"] = trained.weights_sha256
    write_metadata(out_dir, metadata)
    result.metadata = metadata
    if log:
        log(f"held-out sacreBLEU {evaluation['bleu']:.2f} on {evaluation['n']} images ({evaluation['signature']})")
    return result


def greedy_bleu(captioner: Captioner, dataset, batch_size: int = 100) -> dict[str, Any]:
    """Corpus sacreBLEU of greedy captions against all references (ragged reference counts padded as sacrebleu wants)."""
    import time

    import sacrebleu

    began = time.perf_counter()
    hypotheses: list[str] = []
    for start in range(0, len(dataset), batch_size):
        samples = dataset[start:start + batch_size]
        hypotheses += captioner.caption([s.load_image() for s in samples])
    references = [s.captions for s in dataset]
    width = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
    metric = sacrebleu.metrics.BLEU()
    bleu = metric.corpus_score(hypotheses, streams)
    return {
        "bleu": round(bleu.score, 2),
        "signature": str(metric.get_signature()),
        "dataset": dataset.signature,
        "n": len(dataset),
        "decoding": "greedy",
        "max_length": captioner.decode.max_length,
        "seconds": round(time.perf_counter() - began, 1),
        "examples": [{"image_id": s.image_id, "caption": h} for s, h in list(zip(dataset, hypotheses))[:5]],
    }
