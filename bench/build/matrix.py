"""The compression matrix: one YAML file → a list of validated variant recipes.

```yaml
source: builtin                 # the shipped captioner, or a checkpoint directory
defaults: {target: iOS17, precision: fp32}
variants:
  - {name: fp32}
  - {name: int8, quantize: {bits: 8}}
  - {name: prune, prune: {schedule: {step: 0.2, iterations: 5}}}     # the seed's 20 %-of-remaining schedule
  - {name: conv-prune, prune: {sparsities: [0.2, 0.4]}, layers: {select: conv}}
  - {name: input, image_sizes: [48, 64, 80], resizes: [resize, center_crop], crop_fraction: 0.875}
  - {name: large-fp32, source: builtin-large}  # another captioner: the seed's base-vs-large axis
  - {name: int4, target: iOS18, quantize: {bits: 4, granularity: per_block}, decoder: [recompute, kv_cache]}
```

Axes combine within one entry; lists of sparsities and schedules expand into one variant each (named
`<name>-<sparsity>`), lists of input sizes and resize modes into one variant per combination (named
`<name>-<size>-<resize|crop>`), a decoder list [recompute, kv_cache] into the recomputing decoder and the kv_cache one
(named `<name>+kv`; Core ML state, iOS18 only). Unsupported combinations are rejected here, before any conversion, with the reason;
input sizes outside 16..1024 px and unknown resize modes are named with the file and line. A size that is not a
multiple of the patch size is allowed, as the seed's 348 px on BLIP's 16-px patches was: the encoder sees 21 x 21
patches (336 px) and the last 12 px of each row and column are never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from bench.errors import InputError, did_you_mean

TARGET_ORDER = {"iOS16": 16, "iOS17": 17, "iOS18": 18}
LAYER_SELECTIONS = ("all", "conv", "embedding", "linear", "all_but_embedding", "pattern")
PALETTE_MODES = ("kmeans", "uniform")
RESIZE_MODES = ("resize", "center_crop")
RESIZE_SUFFIX = {"resize": "resize", "center_crop": "crop"}
# Recipe fields added after variants were first built, with their default: left out of the cache key at that default,
# so every variant built before keeps its id (and cache) — a new axis only adds variants.
ADDED_FIELDS = {"crop_fraction": 1.0, "decoder": "recompute"}
# How the decoder is exported: one fixed-length step that recomputes every position (any target), or the
# self-attention key/value cache kept in Core ML state (bench.build.kv_cache; iOS 18+).
Decoder = Literal["recompute", "kv_cache"]
KV_SUFFIX = "+kv"  # name of the kv_cache variant when an entry lists both decoders


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _choice(kind: str, value: Any, choices: tuple[str, ...]) -> Any:
    if isinstance(value, str) and value not in choices:
        raise ValueError(str(did_you_mean(kind, value, choices)))
    return value


def _resize_mode(value: Any) -> Any:
    return _choice("resize mode", value, RESIZE_MODES)


class Quantize(_Strict):
    """Linear weight quantization: int8 per channel (iOS16+), int4/int8 per block (iOS18)."""

    bits: Literal[8, 4] = 8
    granularity: Literal["per_channel", "per_block"] = "per_channel"
    block_size: int = Field(32, ge=1)
    mode: Literal["linear_symmetric", "linear"] = "linear_symmetric"


class Palettize(_Strict):
    """Weight palettization (k-means or uniform look-up tables); grouped-channel LUTs on iOS18."""

    bits: Literal[1, 2, 3, 4, 6, 8] = 4
    mode: str = "kmeans"
    granularity: Literal["per_tensor", "per_grouped_channel"] = "per_tensor"
    group_size: int = Field(16, ge=1)

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        return _choice("palettization mode", value, PALETTE_MODES)


class Schedule(_Strict):
    """Iterative magnitude pruning: each iteration prunes `step` of the remaining weights (post-training, so
    iteration k equals one-shot pruning at 1 - (1 - step)^k: the seed's 0.20, 0.36, 0.488, 0.59, 0.672)."""

    step: float = Field(0.2, gt=0, lt=1)
    iterations: int = Field(5, ge=1, le=50)

    def sparsities(self) -> list[float]:
        return [round(1 - (1 - self.step) ** k, 6) for k in range(1, self.iterations + 1)]


class Prune(_Strict):
    """Unstructured magnitude pruning (one sparsity, a list, or a schedule) or n:m pruning (iOS18)."""

    sparsity: float | None = Field(None, ge=0, lt=1)
    sparsities: list[float] | None = None
    schedule: Schedule | None = None
    n_m: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Prune":
        given = [k for k in ("sparsity", "sparsities", "schedule", "n_m") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of sparsity, sparsities, schedule, n_m")
        if self.sparsities is not None and not all(0 <= s < 1 for s in self.sparsities):
            raise ValueError("every sparsity must be in [0, 1)")
        if self.n_m is not None and not (0 < self.n_m[0] <= self.n_m[1]):
            raise ValueError("n_m must be [n, m] with 0 < n <= m")
        return self

    def expand(self) -> list[float | None]:
        if self.schedule is not None:
            return list(self.schedule.sparsities())
        if self.sparsities is not None:
            return list(self.sparsities)
        return [self.sparsity]


class Layers(_Strict):
    """Which weights a compression touches (the seed's conv-vs-embedding sensitivity study).

    conv: weights only consumed by conv ops; embedding: weights read by a gather (the word embedding, tied to the
    LM head) and the position embeddings; linear: weights only consumed by linear/matmul; all_but_embedding;
    pattern: a regular expression searched in the Core ML constant name and the PyTorch parameter name.
    """

    select: str = "all"
    pattern: str | None = None

    @field_validator("select")
    @classmethod
    def _select(cls, value: str) -> str:
        return _choice("layer selection", value, LAYER_SELECTIONS)

    @model_validator(mode="after")
    def _pattern(self) -> "Layers":
        import re

        if (self.select == "pattern") != (self.pattern is not None):
            raise ValueError("select: pattern needs a `pattern`, and `pattern` needs select: pattern")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"invalid pattern: {err}") from None
        return self


class Recipe(_Strict):
    """One fully specified variant (what the cache key hashes)."""

    precision: Literal["fp32", "fp16"] = "fp32"
    target: str = "iOS17"
    image_size: int | None = Field(None, ge=16, le=1024)
    resize: str = "resize"
    crop_fraction: float = Field(1.0, gt=0.25, le=1.0)  # centre crop only (bench.train.captioner.Preprocessing)
    decoder_length: int | None = Field(None, ge=2, le=512)
    quantize: Quantize | None = None
    palettize: Palettize | None = None
    prune: Prune | None = None
    layers: Layers | None = None
    min_elements: int = Field(2048, ge=0)  # smaller weights are left alone (coremltools' weight_threshold)
    decoder: Decoder = "recompute"

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return _choice("deployment target", value, tuple(TARGET_ORDER))

    @field_validator("resize")
    @classmethod
    def _resize(cls, value: str) -> str:
        return _resize_mode(value)

    @model_validator(mode="after")
    def _supported(self) -> "Recipe":
        reason = unsupported_reason(self)
        if reason:
            raise ValueError(reason)
        return self

    @property
    def compressions(self) -> list[str]:
        return [k for k in ("prune", "palettize", "quantize") if getattr(self, k) is not None]

    def crops(self) -> bool:
        return self.resize == "center_crop"

    def key_fields(self) -> dict[str, Any]:
        """The recipe as the cache key hashes it (fields added later are left out at their default: ADDED_FIELDS)."""
        dumped = self.model_dump(mode="json")
        return {k: v for k, v in dumped.items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}


def _decoders(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def unsupported_reason(recipe: Recipe) -> str | None:
    """Why a combination cannot be built for its target (None if it can)."""
    ios = TARGET_ORDER[recipe.target]
    q, p, pr = recipe.quantize, recipe.palettize, recipe.prune
    if "kv_cache" in _decoders(recipe.decoder) and ios < 18:
        return f"decoder kv_cache keeps its cache in Core ML state (MLState), which needs target iOS18, not {recipe.target}"
    if q and p:
        return "quantize and palettize cannot be combined on one weight; choose one"
    if q and q.bits == 4 and ios < 18:
        return f"int4 quantization needs target iOS18 (constexpr_blockwise_shift_scale), not {recipe.target}"
    if q and q.granularity == "per_block" and ios < 18:
        return f"per-block quantization needs target iOS18, not {recipe.target}"
    if p and p.granularity == "per_grouped_channel" and ios < 18:
        return f"grouped-channel palettization needs target iOS18, not {recipe.target}"
    if p and p.bits == 3 and ios < 18:
        return f"3-bit palettization needs target iOS18, not {recipe.target}"
    if pr and pr.n_m is not None and ios < 18:
        return f"n:m pruning needs target iOS18, not {recipe.target}"
    if pr and (q or p) and ios < 18:
        return f"joint pruning + {'quantization' if q else 'palettization'} needs target iOS18, not {recipe.target}"
    if recipe.layers and not recipe.compressions:
        return "`layers` selects weights to compress, but no prune/quantize/palettize is given"
    if recipe.crop_fraction != 1.0 and not recipe.crops():
        return f"crop_fraction applies to resize: center_crop only (this entry resizes with {recipe.resize!r})"
    return None


class Entry(Recipe):
    """A matrix entry: a named recipe whose prune lists/schedules, input-size / resize-mode lists and decoder list
    expand into several variants, `source` (default: the matrix's) the captioner it compresses — or Core ML models made elsewhere
    (`package: PATH` or `packages: [PATH, …]`, relative to the matrix file), imported as variants
    (bench.build.imported) with an optional `name` (one package), `family` and `reference`."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=64)
    package: str | None = Field(None, min_length=1)
    packages: list[str] | None = Field(None, min_length=1)
    family: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=64)
    reference: bool = False
    source: str | None = Field(None, min_length=1)
    image_sizes: list[int] | None = Field(None, min_length=1)
    resizes: list[str] | None = Field(None, min_length=1)
    decoder: Decoder | list[Decoder] = "recompute"

    @field_validator("decoder")
    @classmethod
    def _distinct_decoders(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("decoder: give recompute, kv_cache or a list of both, each once")
        return value

    @field_validator("image_sizes")
    @classmethod
    def _sizes(cls, values: list[int] | None) -> list[int] | None:
        for value in values or ():
            if not 16 <= value <= 1024:
                raise ValueError(f"input size {value} is outside 16..1024 pixels")
        if values and len(set(values)) != len(values):
            raise ValueError("an input size is listed twice")
        return values

    @field_validator("resizes")
    @classmethod
    def _modes(cls, values: list[str] | None) -> list[str] | None:
        for value in values or ():
            _resize_mode(value)
        if values and len(set(values)) != len(values):
            raise ValueError("a resize mode is listed twice")
        return values

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        return None if value is None else _builtin_source(value)

    @model_validator(mode="before")
    @classmethod
    def _one_or_list(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for single, many in LIST_FORMS.items():
                if data.get(many) is not None and data.get(single) is not None:
                    raise ValueError(f"give either {single} or {many}, not both")
        return data

    def crops(self) -> bool:
        return "center_crop" in (self.resizes or [self.resize])

    @model_validator(mode="after")
    def _recipe_or_packages(self) -> "Entry":
        if self.package is not None and self.packages is not None:
            raise ValueError("give `package` or `packages`, not both")
        if not self.is_import:
            if self.name is None:
                raise ValueError("name: required key is missing")
            if self.family is not None or self.reference:
                raise ValueError("`family` and `reference` belong to imported packages (`package:`/`packages:`)")
            return self
        recipe = [k for k in ("quantize", "palettize", "prune", "layers", "image_size", "decoder_length", "source",
                              "image_sizes", "resizes") if getattr(self, k) is not None]
        if self.decoder != "recompute":
            recipe.append("decoder")
        if recipe:
            raise ValueError(f"`{recipe[0]}` is a build recipe; an imported package is measured as it is")
        if self.packages is not None and (self.name is not None or self.reference):
            raise ValueError("`name` and `reference` name one package; use `package:` entries for them")
        return self

    @property
    def is_import(self) -> bool:
        return self.package is not None or self.packages is not None


class PlannedImport(BaseModel):
    """One package to import, as a matrix entry says (paths relative to the matrix file)."""

    model_config = ConfigDict(frozen=True)

    path: str
    name: str | None = None
    family: str | None = None
    reference: bool = False

    @property
    def label(self) -> str:
        from bench.build.imported import default_name

        return self.name or default_name(Path(self.path))


class Defaults(_Strict):
    precision: Literal["fp32", "fp16"] | None = None
    target: str | None = None
    image_size: int | None = Field(None, ge=16, le=1024)
    resize: str | None = None
    decoder_length: int | None = Field(None, ge=2, le=512)
    min_elements: int | None = Field(None, ge=0)
    decoder: Decoder | list[Decoder] | None = None

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else _choice("deployment target", value, tuple(TARGET_ORDER))

    @field_validator("resize")
    @classmethod
    def _resize(cls, value: str | None) -> str | None:
        return None if value is None else _resize_mode(value)


LIST_FORMS = {"image_size": "image_sizes", "resize": "resizes"}


def _defaults_for(entry: dict, defaults: dict) -> dict:
    """The defaults an entry takes: not a single image_size/resize where the entry lists its own."""
    return {k: v for k, v in defaults.items() if LIST_FORMS.get(k) not in entry}


def _builtin_source(value: str) -> str:
    """`builtin…` names a shipped captioner (bench.paths.BUILTIN_SOURCES); anything else is a checkpoint path."""
    from bench.paths import BUILTIN_SOURCES

    if value.startswith("builtin") and value not in BUILTIN_SOURCES:
        raise ValueError(str(did_you_mean("built-in captioner", value, BUILTIN_SOURCES)))
    return value


class Matrix(_Strict):
    source: str = "builtin"
    defaults: Defaults = Defaults()
    variants: list[Entry] = Field(min_length=1)
    _base_dir: Path | None = PrivateAttr(default=None)  # the matrix file's folder: package paths are relative to it

    def package_path(self, planned: PlannedImport, workspace_root: Path) -> Path:
        path = Path(planned.path).expanduser()
        return path if path.is_absolute() else (self._base_dir or workspace_root) / path

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return _builtin_source(value)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        # Merge defaults into each entry before validation, so a problem is reported at the entry's own line.
        if not isinstance(data, dict) or not isinstance(data.get("defaults", {}), dict):
            return data
        defaults = {k: v for k, v in (data.get("defaults") or {}).items() if k in Defaults.model_fields}
        variants = data.get("variants")
        if isinstance(variants, list):  # build defaults do not apply to imported packages
            data = {**data, "variants": [{**_defaults_for(v, defaults), **v}
                                         if isinstance(v, dict) and not _names_package(v) else v for v in variants]}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> "Matrix":
        seen: set[str] = set()
        for planned in [*self.planned(), *self.imports()]:
            if planned.name is None:
                continue
            if planned.name in seen:
                raise ValueError(f"duplicate variant name {planned.name!r} (after expanding sparsity lists)")
            seen.add(planned.name)
        return self

    def planned(self) -> list["PlannedVariant"]:
        """The variants to build (recipes)."""
        return [planned for entry in self.variants if not entry.is_import for planned in _expand(entry)]

    def imports(self) -> list[PlannedImport]:
        """The packages to import, in the matrix's order."""
        found = []
        for entry in self.variants:
            for path in ([entry.package] if entry.package is not None else entry.packages or []):
                found.append(PlannedImport(path=path, name=entry.name, family=entry.family,
                                           reference=entry.reference))
        return found


    def source_of(self, entry: "Entry") -> str:
        return entry.source or self.source


def _names_package(entry: dict) -> bool:
    return "package" in entry or "packages" in entry


class PlannedVariant(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    recipe: Recipe
    source: str | None = None  # the entry's own source; None = the matrix's


def _expand(entry: Entry) -> list[PlannedVariant]:
    """One variant per input size × resize mode × sparsity × decoder of the entry (only axes given as lists add a
    suffix; of a decoder list, the kv_cache one is `…+kv`)."""
    body = entry.model_dump(exclude={"name", "package", "packages", "family", "reference", "source", "image_sizes",
                                     "resizes", "decoder"})
    decoders = _decoders(entry.decoder)
    kinds = [(KV_SUFFIX if decoder == "kv_cache" and len(decoders) > 1 else "", {"decoder": decoder})
             for decoder in decoders]
    sizes = [(f"-{size}", {"image_size": size}) for size in entry.image_sizes] if entry.image_sizes else [("", {})]
    modes = [(f"-{RESIZE_SUFFIX[mode]}", {"resize": mode, "crop_fraction": entry.crop_fraction if mode == "center_crop"
                                          else 1.0}) for mode in entry.resizes] if entry.resizes else [("", {})]
    prune = entry.prune
    if prune is None or prune.n_m is not None or prune.sparsity is not None:
        sparsities = [("", {})]
    else:
        sparsities = [(f"-{_short(s)}", {"prune": {"sparsity": s}}) for s in prune.expand()]
    variants = []
    for size_suffix, size in sizes:
        for mode_suffix, mode in modes:
            for sparsity_suffix, sparsity in sparsities:
                for kind_suffix, kind in kinds:
                    recipe = Recipe.model_validate({**body, **size, **mode, **sparsity, **kind})
                    name = f"{entry.name}{size_suffix}{mode_suffix}{sparsity_suffix}{kind_suffix}"
                    variants.append(PlannedVariant(name=name, recipe=recipe, source=entry.source))
    return variants


def _short(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"


def load_matrix(path: Path | str) -> Matrix:
    """Read and validate a matrix YAML file; every problem is one line with file, line and key."""
    from bench.yamlconf import load_yaml

    try:
        matrix = load_yaml(path, Matrix)
    except InputError as err:
        raise _with_suggestion(err) from None
    matrix._base_dir = Path(path).resolve().parent
    return matrix


def _known_keys() -> set[str]:
    models = (Matrix, Defaults, Entry, Quantize, Palettize, Schedule, Prune, Layers)
    return {key for model in models for key in model.model_fields}


def _with_suggestion(err: InputError) -> InputError:
    """pydantic says only 'unknown key'; add the closest known key (a misspelt compression name, usually)."""
    detail = err.detail
    if not detail.endswith(": unknown key") and ": unknown key (and" not in detail:
        return err
    key = detail.split(": unknown key")[0].rsplit(".", 1)[-1]
    hint = did_you_mean("key", key, _known_keys()).detail
    return InputError(f"{detail.split(': unknown key')[0]}: {hint}", file=err.file, line=err.line)


def matrix_from_dict(data: dict[str, Any]) -> Matrix:
    """Validate an in-memory matrix (tests, benchmarks). Errors are InputErrors like the YAML path's."""
    from pydantic import ValidationError

    try:
        return Matrix.model_validate(data)
    except ValidationError as err:
        problem = err.errors()[0]
        key = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"].removeprefix("Value error, ")
        raise _with_suggestion(InputError(f"{key}: {message}")) from None
