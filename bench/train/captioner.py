"""The captioner every stage uses: a transformers BLIP captioning model, its tokenizer and its preprocessing.

`load_captioner(path)` reads a local checkpoint directory only (never the model hub): the shipped built-in captioner
(bench.paths.BUILTIN_CAPTIONER_DIR), a checkpoint written by the trainer, or a downloaded
Salesforce/blip-image-captioning-base/-large directory. See docs/contracts.md §1.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench.errors import InputError

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

METADATA_FILE = "bench_captioner.json"
METADATA_KIND = "bench.captioner"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# BLIP's image statistics (OpenAI CLIP), used when a checkpoint has no preprocessor_config.json.
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, BLIP's resampling
DEFAULT_MAX_LENGTH = 20
# Tied to the word embedding, so never stored separately.
_TIED_KEYS = ("text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.bias")  # transformers' generate default, what BLIP checkpoints were evaluated with

# Special tokens of a BLIP tokenizer: [DEC] starts a caption, [SEP] ends it.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


@dataclass(frozen=True)
class DecodeConfig:
    """Token ids decoding needs. `max_length` counts the bos token, as transformers' `generate(max_length=)` does."""

    bos_id: int
    eos_id: int
    pad_id: int
    max_length: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input: resize (or shorter-side resize + centre crop), scale, normalise.

    `crop_fraction` (centre crop only): the crop keeps that fraction of the shorter side (the shorter side is resized
    to size / crop_fraction first, as torchvision's Resize(256) + CenterCrop(224) keeps 0.875). 1.0 crops the
    largest centre square (CLIP's preprocessing), which on a square image is the same as resizing."""

    image_size: int
    mean: tuple[float, float, float] = BLIP_MEAN
    std: tuple[float, float, float] = BLIP_STD
    resample: int = BICUBIC
    rescale_factor: float = 1 / 255
    crop_fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


@dataclass
class Captioner:
    model: Any  # transformers.BlipForConditionalGeneration, eval mode, eager attention
    tokenizer: Any
    image_size: int
    decode: DecodeConfig
    weights_sha256: str
    name: str
    preprocessing: Preprocessing = field(default=None)  # type: ignore[assignment]
    path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            self.preprocessing = Preprocessing(self.image_size)

    def preprocess(
        self,
        images: list["PILImage.Image"],
        size: int | None = None,
        mode: Literal["resize", "center_crop"] = "resize",
    ) -> "torch.Tensor":
        """Images → float32 tensor [N, 3, S, S], normalised exactly as the model was trained."""
        return preprocess_images(images, self.preprocessing, size=size or self.image_size, mode=mode)

    def generate(self, pixel_values: "torch.Tensor", *, num_beams: int = 1, max_length: int | None = None):
        """Token ids from HF generate (greedy by default), starting with the bos token."""
        import torch

        with torch.inference_mode():
            return self.model.generate(
                pixel_values=pixel_values.to(self.model.device),
                max_length=max_length or self.decode.max_length,
                num_beams=num_beams,
                do_sample=False,
            )

    def caption(self, images: list["PILImage.Image"], **options: Any) -> list[str]:
        """Greedy captions for a few images (convenience; bench eval batches and records tokens)."""
        ids = self.generate(self.preprocess(images), **options)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def preprocess_images(
    images: list["PILImage.Image"], prep: Preprocessing, *, size: int, mode: str = "resize"
) -> "torch.Tensor":
    import numpy as np
    import torch

    if mode not in ("resize", "center_crop"):
        raise InputError(f"unknown resize mode {mode!r}; use 'resize' or 'center_crop'")
    if not images:
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    batch = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, image in enumerate(images):
        batch[i] = np.asarray(_fit(image.convert("RGB"), size, mode, prep.resample, prep.crop_fraction),
                              dtype=np.float32)
    batch *= prep.rescale_factor
    batch -= np.asarray(prep.mean, dtype=np.float32)
    batch /= np.asarray(prep.std, dtype=np.float32)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def _fit(image, size: int, mode: str, resample: int, crop_fraction: float = 1.0):
    if mode == "resize":
        return image.resize((size, size), resample=resample)
    # centre crop: scale the shorter side to `size / crop_fraction`, then cut the middle `size` square
    width, height = image.size
    scale = round(size / crop_fraction) / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), resample=resample)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


# ---- loading -----------------------------------------------------------------------------------------------------


def weights_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    if any(path.glob("model-*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        raise InputError("sharded checkpoints are not supported; save it as a single model.safetensors", file=str(path))
    raise InputError(
        f"no weights in this checkpoint directory (expected {' or '.join(WEIGHT_FILES)}); "
        "download the checkpoint first — bench never fetches from the model hub",
        file=str(path),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint_dir(path: Path | str) -> Path:
    """A clear error for everything that would otherwise send transformers to the hub or into a traceback."""
    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint directory does not exist", file=str(path))
    if not path.is_dir():
        raise InputError("a checkpoint must be a directory (config.json, model.safetensors, tokenizer files)",
                         file=str(path))
    if not (path / "config.json").is_file():
        raise InputError("no config.json: not a transformers checkpoint directory", file=str(path))
    weights_file(path)
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    file = path / METADATA_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"corrupt training metadata: {err}", file=str(file)) from None


def read_preprocessing(path: Path, default_size: int) -> Preprocessing:
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return Preprocessing(default_size)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"corrupt preprocessor config: {err}", file=str(file)) from None
    size = raw.get("size", default_size)
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or default_size
    return Preprocessing(
        image_size=int(size),
        mean=tuple(raw.get("image_mean", BLIP_MEAN)),  # type: ignore[arg-type]
        std=tuple(raw.get("image_std", BLIP_STD)),  # type: ignore[arg-type]
        resample=int(raw.get("resample", BICUBIC)),
        rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
    )


def load_captioner(path: Path | str, *, device: str | None = None) -> Captioner:
    """Load a local BLIP captioning checkpoint (eager attention, eval mode). Never downloads anything."""
    path = check_checkpoint_dir(path)
    _check_blip_config(path)
    from safetensors import SafetensorError  # a transformers dependency: truncated or corrupt model.safetensors
    from transformers import BlipForConditionalGeneration

    quiet_transformers()
    try:
        model, info = BlipForConditionalGeneration.from_pretrained(
            path, attn_implementation="eager", local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise InputError(f"cannot load BLIP weights: {err}".splitlines()[0], file=str(path)) from None
    # A BLIP checkpoint for another task (VQA, retrieval) loads with a randomly initialised captioning head:
    # refuse it rather than evaluate noise.
    missing = [key for key in info.get("missing_keys", ()) if key not in _TIED_KEYS]
    if missing:
        raise InputError(
            f"not a BLIP captioning checkpoint: {len(missing)} weights missing (e.g. {missing[0]})", file=str(path)
        )
    model.eval()
    if device:
        model.to(device)
    return captioner_around(model, path, weights_sha256=sha256_file(weights_file(path)))


def _check_blip_config(path: Path) -> None:
    config = _read_json(path / "config.json")
    if config.get("model_type") != "blip":
        raise InputError(
            f"model_type is {config.get('model_type')!r}; bench captions with BLIP (BlipForConditionalGeneration)",
            file=str(path / "config.json"),
        )


def captioner_around(model, path: Path | str, *, weights_sha256: str) -> Captioner:
    """A Captioner of `model` with the tokenizer, decoding and preprocessing of the checkpoint at `path` (whose
    weights are not read: the caller says which weights `model` holds)."""
    path = check_checkpoint_dir(path)
    _check_blip_config(path)
    tokenizer = load_tokenizer(path)
    metadata = read_metadata(path)
    vision_size = int(model.config.vision_config.image_size)
    text = model.config.text_config
    decode = DecodeConfig(
        bos_id=int(text.bos_token_id),
        eos_id=int(text.sep_token_id),
        pad_id=int(text.pad_token_id),
        max_length=int(metadata.get("decode", {}).get("max_length", DEFAULT_MAX_LENGTH)),
    )
    return Captioner(
        model=model,
        tokenizer=tokenizer,
        image_size=vision_size,
        decode=decode,
        weights_sha256=weights_sha256,
        name=str(metadata.get("name") or path.name),
        preprocessing=read_preprocessing(path, vision_size),
        path=path,
        metadata=metadata,
    )


def quiet_transformers() -> None:
    """transformers' own per-file progress bars would interleave with bench's single rich progress bar."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(path: Path):
    from transformers import BertTokenizer

    if not ((path / "vocab.txt").is_file() or (path / "tokenizer.json").is_file()):
        raise InputError("no tokenizer files (vocab.txt or tokenizer.json) in the checkpoint directory", file=str(path))
    try:
        return BertTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot load tokenizer: {err}".splitlines()[0], file=str(path)) from None


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read: {err}", file=str(file)) from None


# ---- the built-in captioner's architecture ------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinArchitecture:
    """A small BLIP: ~1.5 M parameters, a few MB in fp32, trainable on two CPU cores in minutes.

    `vision_hidden_size`/`vision_intermediate_size` (None: as the text decoder's) let the vision encoder grow alone,
    as BLIP-large differs from BLIP-base only by its vision transformer (ViT-L vs ViT-B; same text decoder)."""

    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 128
    intermediate_size: int = 512
    vision_layers: int = 3
    text_layers: int = 3
    heads: int = 4
    max_positions: int = 32
    max_length: int = 24
    vision_hidden_size: int | None = None
    vision_intermediate_size: int | None = None

    def recorded(self) -> dict[str, Any]:
        """The fields that define it, without unset optional ones (so the base's recorded id is unchanged)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


# The shipped built-in captioners, same seeded recipe (bench/train/builtin.py), "base vs large" as in the seed study:
# large has a 1.5x wider, one layer deeper vision encoder and the same text decoder (BLIP-large vs -base: ViT-L vs
# ViT-B, same BERT-base decoder): 2.70 M parameters, 1.86x base (BLIP: 470 M vs 247 M, 1.9x); same 64 px input.
BUILTIN_ARCHITECTURES = {
    "base": BuiltinArchitecture(),
    "large": BuiltinArchitecture(vision_hidden_size=192, vision_intermediate_size=768, vision_layers=4),
}


# BLIP-base and -large differ by their vision transformer only (ViT-B/16 vs ViT-L/16).
BLIP_VISION_SIZES = {(768, 12): "base", (1024, 24): "large"}


def model_size_label(config: dict[str, Any]) -> str | None:
    """"base" / "large" for a BLIP config whose vision encoder is a built-in captioner's or BLIP-base/-large's
    (read from config.json, never from a folder name); None for any other architecture."""
    vision = config.get("vision_config") or {}
    shape = (vision.get("hidden_size"), vision.get("num_hidden_layers"))
    for size, arch in BUILTIN_ARCHITECTURES.items():
        builtin = (arch.vision_hidden_size or arch.hidden_size, arch.vision_layers)
        if shape == builtin and vision.get("patch_size") == arch.patch_size:
            return size
    return BLIP_VISION_SIZES.get(shape)  # type: ignore[arg-type]


def builtin_vocabulary() -> list[str]:
    """[PAD]=0 …[DEC]=5, then punctuation BertTokenizer may split off, then every word of the synthetic grammar."""
    from bench.data import synthetic

    return [*SPECIAL_TOKENS, ".", ",", *synthetic.vocabulary()]


def write_builtin_tokenizer(directory: Path):
    """A word-level BertTokenizer (vocab.txt) built from the synthetic grammar — no hub download."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(builtin_vocabulary())}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, bos_token="[DEC]", model_max_length=64)
    tokenizer.save_pretrained(directory)
    # vocab.txt too: the classic BERT layout that any BertTokenizer (and a person) can read.
    (directory / "vocab.txt").write_text("\n".join(builtin_vocabulary()) + "\n", encoding="utf-8")
    return tokenizer


def new_builtin_model(arch: BuiltinArchitecture, tokenizer, seed: int = 0):
    """A freshly initialised small BLIP (vision initializer_range 0.02: BLIP's 1e-10 default underflows in fp16)."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    vocab = tokenizer.get_vocab()
    config = BlipConfig(
        vision_config={
            "image_size": arch.image_size,
            "patch_size": arch.patch_size,
            "hidden_size": arch.vision_hidden_size or arch.hidden_size,
            "intermediate_size": arch.vision_intermediate_size or arch.intermediate_size,
            "num_hidden_layers": arch.vision_layers,
            "num_attention_heads": arch.heads,
            "initializer_range": 0.02,
        },
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": arch.hidden_size,
            "intermediate_size": arch.intermediate_size,
            "num_hidden_layers": arch.text_layers,
            "num_attention_heads": arch.heads,
            "max_position_embeddings": arch.max_positions,
            "bos_token_id": vocab["[DEC]"],
            "eos_token_id": vocab["[SEP]"],
            "sep_token_id": vocab["[SEP]"],
            "pad_token_id": vocab["[PAD]"],
        },
        projection_dim=arch.hidden_size,
        image_text_hidden_size=arch.hidden_size,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration._from_config(config, attn_implementation="eager")
    return model


def write_preprocessor_config(directory: Path, prep: Preprocessing) -> None:
    """A BlipImageProcessor-compatible preprocessor_config.json, so BlipProcessor reads the same settings."""
    from bench import atomic

    atomic.write_json(
        directory / "preprocessor_config.json",
        {
            "image_processor_type": "BlipImageProcessor",
            "do_resize": True,
            "size": {"height": prep.image_size, "width": prep.image_size},
            "resample": prep.resample,
            "do_rescale": True,
            "rescale_factor": prep.rescale_factor,
            "do_normalize": True,
            "image_mean": list(prep.mean),
            "image_std": list(prep.std),
            "do_convert_rgb": True,
        },
    )
