"""One trainer for the built-in captioner and for fine-tuning any local BLIP checkpoint (`bench finetune`).

Resumable: every `save_every` steps a complete checkpoint (weights, optimizer state, trainer state) is written to
`<out>/checkpoints/step-NNNNNNN/` through bench.atomic.directory, so a checkpoint is either complete or absent; a new
run in the same output directory continues from the last one. Batches are a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted run would have seen.

The finished model is a checkpoint directory `load_captioner` reads (config.json, model.safetensors, tokenizer,
preprocessor_config.json) plus `bench_captioner.json` with the training metadata, written last.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import atomic
from bench.errors import InputError, check_seed, did_you_mean
from bench.store import records
from bench.train.captioner import METADATA_FILE, METADATA_KIND, Captioner, write_preprocessor_config

if TYPE_CHECKING:
    import torch

    from bench.data.base import CaptionDataset

records.register_kind(METADATA_KIND, 1)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
# Resized training images are kept in memory (uint8) when they fit this budget; otherwise re-read every epoch.
IMAGE_CACHE_BYTES = 1 << 30
DEVICES = ("cpu", "cuda", "mps")  # `cuda:1` names one of several GPUs


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decay ends at lr × this
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 200
    log_every: int = 50
    max_caption_tokens: int = 40  # including [DEC] and [SEP]
    image_mode: str = "resize"
    threads: int | None = None  # CPU threads; None = min(4, cores)
    device: str | None = None  # None = cuda, else mps, else cpu
    keep_checkpoints: bool = True

    def validate(self) -> "TrainConfig":
        """One clear line for a setting the loop would otherwise trip over (modulo by zero, empty batch, torch)."""
        if self.steps <= 0:
            raise InputError(f"steps must be positive, got {self.steps}")
        for name in ("batch_size", "save_every", "log_every", "max_caption_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise InputError(f"warmup steps must not be negative, got {self.warmup_steps}")
        if self.lr <= 0:
            raise InputError(f"learning rate must be positive, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        if self.device is not None and self.device.split(":")[0] not in DEVICES:
            raise did_you_mean("device", self.device, DEVICES)
        check_seed(self.seed)
        return self

    def fingerprint(self) -> dict[str, Any]:
        """Settings a resumed run must share with the run it continues (steps may grow, device may change)."""
        keep = ("batch_size", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip", "seed",
                "max_caption_tokens", "image_mode")
        return {key: getattr(self, key) for key in keep}


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_loss: float
    train_seconds: float
    resumed_from: list[int] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def pick_device(requested: str | None = None) -> str:
    import torch

    if requested:
        kind = requested.split(":")[0]
        if (kind == "cuda" and not torch.cuda.is_available()) or (kind == "mps" and not _mps_available()):
            raise InputError(f"device {requested!r} is not available on this machine; use --device cpu")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio × lr at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---- batches -----------------------------------------------------------------------------------------------------


class BatchMaker:
    """Deterministic batches: epoch permutations and caption choices come from (seed, epoch/step) only."""

    def __init__(self, captioner: Captioner, dataset: "CaptionDataset", config: TrainConfig):
        self.captioner, self.dataset, self.config = captioner, dataset, config
        size = captioner.image_size
        self.cache: dict[int, Any] | None = {} if len(dataset) * size * size * 3 <= IMAGE_CACHE_BYTES else None
        self._permutations: dict[int, Any] = {}

    def _permutation(self, epoch: int):
        import numpy as np

        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.config.seed, epoch]).permutation(len(self.dataset))}
        return self._permutations[epoch]

    def indices(self, step: int) -> list[int]:
        n, batch = len(self.dataset), self.config.batch_size
        chosen = []
        for position in range(step * batch, (step + 1) * batch):
            chosen.append(int(self._permutation(position // n)[position % n]))
        return chosen

    def _pixels(self, index: int):
        """The resized uint8 image (HWC) — normalised later exactly as Captioner.preprocess does."""
        import numpy as np

        from bench.train.captioner import _fit

        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image = self.dataset[index].load_image()
        pixels = np.array(_fit(image, self.captioner.image_size, self.config.image_mode,
                                 self.captioner.preprocessing.resample), dtype=np.uint8)
        if self.cache is not None:
            self.cache[index] = pixels
        return pixels

    def batch(self, step: int) -> dict[str, "torch.Tensor"]:
        import numpy as np
        import torch

        indices = self.indices(step)
        rng = np.random.default_rng([self.config.seed, step, 1])
        captions = []
        for index in indices:
            references = self.dataset[index].captions
            captions.append(references[int(rng.integers(len(references)))])
        prep = self.captioner.preprocessing
        pixels = np.stack([self._pixels(i) for i in indices]).astype(np.float32)
        pixels *= prep.rescale_factor
        pixels -= np.asarray(prep.mean, dtype=np.float32)
        pixels /= np.asarray(prep.std, dtype=np.float32)
        encoded = self.captioner.tokenizer(
            captions, padding="longest", truncation=True, max_length=self.config.max_caption_tokens,
            return_tensors="pt",
        )
        input_ids = encoded["input_ids"].clone()
        # BLIP decodes from its bos token ([DEC]) where the tokenizer put [CLS]; generate() does the same.
        input_ids[:, 0] = self.captioner.decode.bos_id
        labels = input_ids.masked_fill(encoded["attention_mask"] == 0, -100)
        return {
            "pixel_values": torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"],
            "labels": labels,
        }


# ---- checkpoints -------------------------------------------------------------------------------------------------


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (an interrupted save leaves only a hidden .tmp folder)."""
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(out_dir: Path, model, optimizer, state: dict[str, Any]) -> Path:
    import torch

    final = out_dir / CHECKPOINTS / f"step-{state['step']:07d}"
    with atomic.directory(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        atomic.write_json(tmp / STATE_FILE, state)
    for older in checkpoint_dirs(out_dir)[:-1]:  # keep only the newest: checkpoints are for resuming
        shutil.rmtree(older, ignore_errors=True)
    return final


def load_state(checkpoint: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"corrupt trainer state: {err}", file=str(checkpoint / STATE_FILE)) from None


def _load_resume_point(checkpoint: Path) -> tuple[Any, dict[str, Any]]:
    """The model and optimizer state saved in `checkpoint`; a damaged file is one line naming the checkpoint."""
    import pickle

    import torch
    from safetensors import SafetensorError
    from transformers import BlipForConditionalGeneration

    try:
        model = BlipForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager",
                                                             local_files_only=True)
        optimizer_state = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    # torch.load reports a damaged file as any of these, depending on where the bytes stop making sense.
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise InputError(f"cannot resume from this checkpoint ({type(err).__name__}: {first_line}); "
                         "delete it to start over, or use another --out directory", file=str(checkpoint)) from None
    return model, optimizer_state


def _check_resumable(state: dict[str, Any], expected: dict[str, Any], checkpoint: Path) -> None:
    for key, value in expected.items():
        if state.get(key) != value:
            raise InputError(
                f"cannot resume: this output directory holds a run with {key}={state.get(key)!r}, not {value!r}; "
                "use another --out directory or delete its checkpoints/",
                file=str(checkpoint),
            )


# ---- the loop ----------------------------------------------------------------------------------------------------


def train(
    captioner: Captioner,
    dataset: "CaptionDataset",
    out_dir: Path | str,
    config: TrainConfig,
    *,
    base: dict[str, Any],
    name: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `captioner.model` on `dataset` for `config.steps` steps; resume from `out_dir` if it holds a checkpoint."""
    import torch

    from bench.store.environment import host_environment, now_iso

    config.validate()
    if len(dataset) == 0:
        raise InputError("cannot train on an empty dataset")
    from bench.train.captioner import quiet_transformers

    quiet_transformers()
    out_dir = Path(out_dir)
    refuse_foreign_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or (lambda message: None)
    device = pick_device(config.device)
    threads = config.threads or default_threads()
    if device == "cpu":
        torch.set_num_threads(threads)

    expected = {**config.fingerprint(), "dataset": dataset.signature, "base": base.get("id")}
    start_step, elapsed, losses, resumed_from = 0, 0.0, [], []
    model = captioner.model
    checkpoints = checkpoint_dirs(out_dir)
    optimizer_state = None
    if checkpoints:
        last = checkpoints[-1]
        state = load_state(last)
        _check_resumable(state, expected, last)
        model, optimizer_state = _load_resume_point(last)
        start_step, elapsed, losses = state["step"], state["elapsed_seconds"], state["losses"]
        resumed_from = [*state.get("resumed_from", []), start_step]
        log(f"resuming from {last} (step {start_step})")
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    torch.manual_seed(config.seed + start_step)

    batches = BatchMaker(captioner, dataset, config)
    recent: list[float] = []
    began = time.perf_counter()

    def state_at(step: int) -> dict[str, Any]:
        return {**expected, "step": step, "elapsed_seconds": elapsed + time.perf_counter() - began,
                "losses": losses, "resumed_from": resumed_from}

    with _progress_bar(progress, config.steps, start_step) as advance:
        for step in range(start_step, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            batch = {key: value.to(device) for key, value in batches.batch(step).items()}
            loss = model(**batch).loss
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            recent.append(float(loss.detach()))
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                mean = sum(recent) / len(recent)
                losses.append([done, round(mean, 5)])
                recent.clear()
                log(f"step {done}/{config.steps} loss {mean:.4f} lr {learning_rate(config, step):.2e} "
                    f"{elapsed + time.perf_counter() - began:.0f}s")
            if done % config.save_every == 0 or done == config.steps:
                save_checkpoint(out_dir, model, optimizer, state_at(done))
            advance(loss=recent[-1] if recent else losses[-1][1])

    train_seconds = elapsed + time.perf_counter() - began
    model.eval()
    captioner.model = model
    metadata = {
        "name": name or out_dir.name,
        "base": base,
        "dataset": {"spec": dataset.spec, "split": dataset.split, "signature": dataset.signature, "n": len(dataset)},
        "training": {**asdict(config), "device": device, "threads": threads if device == "cpu" else None},
        "result": {"steps": config.steps, "final_loss": losses[-1][1] if losses else None, "losses": losses,
                   "train_seconds": round(train_seconds, 1), "resumed_from": resumed_from},
        "decode": captioner.decode.to_dict(),
        "preprocessing": captioner.preprocessing.to_dict(),
        "finished_at": now_iso(),
        "environment": host_environment(),
        **(extra_metadata or {}),
    }
    save_final(captioner, out_dir, metadata)
    if not config.keep_checkpoints:
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    return TrainResult(out_dir, config.steps, metadata["result"]["final_loss"], train_seconds, resumed_from, metadata)


def refuse_foreign_out_dir(out_dir: Path) -> None:
    """Training replaces weights and config files in `out_dir`: only ever in a new, empty or earlier training folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError("--out must be a directory, not a file", file=str(out_dir))
    ours = (out_dir / METADATA_FILE).exists() or (out_dir / CHECKPOINTS).is_dir()
    if not ours and any(out_dir.iterdir()):
        raise InputError("holds files that are not a training output (training would overwrite them): "
                         "give a new or empty --out directory", file=str(out_dir))


def save_final(captioner: Captioner, out_dir: Path, metadata: dict[str, Any]) -> None:
    """Write the loadable checkpoint: each file atomically, the metadata last (its presence means complete)."""
    (out_dir / METADATA_FILE).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".final.", dir=out_dir) as staging:
        staging_dir = Path(staging)
        captioner.model.save_pretrained(staging_dir, safe_serialization=True)
        captioner.tokenizer.save_pretrained(staging_dir)
        if captioner.path is not None and (captioner.path / "vocab.txt").is_file():
            shutil.copyfile(captioner.path / "vocab.txt", staging_dir / "vocab.txt")
        write_preprocessor_config(staging_dir, captioner.preprocessing)
        for file in staging_dir.iterdir():
            if file.is_file():
                file.chmod(0o644)  # temporary files are private; the checkpoint is meant to be shared
                os.replace(file, out_dir / file.name)
    from bench.train.captioner import sha256_file, weights_file

    metadata = {**metadata, "weights_sha256": sha256_file(weights_file(out_dir))}
    write_metadata(out_dir, metadata)


def write_metadata(out_dir: Path, metadata: dict[str, Any]) -> None:
    """bench_captioner.json, atomically and world-readable like the rest of the checkpoint."""
    path = atomic.write_json(out_dir / METADATA_FILE, records.stamp(METADATA_KIND, metadata))
    path.chmod(0o644)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, completed: int) -> Iterator[Callable[..., None]]:
    """A rich progress bar with the running loss; yields `advance(**fields)`. Silent when enabled=False (tests)."""
    if not enabled:
        yield lambda **fields: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
    ) as progress:
        task = progress.add_task("train", total=total, completed=completed, loss=float("nan"))
        yield lambda **fields: progress.update(task, advance=1, **fields)
