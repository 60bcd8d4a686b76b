"""The compression matrix: one YAML file → a list of validated variant recipes.

```yaml
source: builtin                 # the shipped captioner, or a checkpoint directory
defaults: {target: iOS17, precision: fp32}
variants:
  - {name: fp32}
  - {name: int8, quantize: {bits: 8}}
  - {name: prune, prune: {schedule: {step: 0.2, iterations: 5}}}     # the seed's 20 %-of-remaining schedule
  - {name: conv-prune, prune: {sparsities: [0.2, 0.4]}, layers: {select: conv}}
```

Axes combine within one entry; lists of sparsities and schedules expand into one variant each (named
`<name>-<sparsity>`). Unsupported combinations are rejected here, before any conversion, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from bench.errors import InputError, did_you_mean

TARGET_ORDER = {"iOS16": 16, "iOS17": 17, "iOS18": 18}
LAYER_SELECTIONS = ("all", "conv", "embedding", "linear", "all_but_embedding", "pattern")
PALETTE_MODES = ("kmeans", "uniform")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _choice(kind: str, value: Any, choices: tuple[str, ...]) -> Any:
    if isinstance(value, str) and value not in choices:
        raise ValueError(str(did_you_mean(kind, value, choices)))
    return value


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
    resize: Literal["resize", "center_crop"] = "resize"
    decoder_length: int | None = Field(None, ge=2, le=512)
    quantize: Quantize | None = None
    palettize: Palettize | None = None
    prune: Prune | None = None
    layers: Layers | None = None
    min_elements: int = Field(2048, ge=0)  # smaller weights are left alone (coremltools' weight_threshold)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return _choice("deployment target", value, tuple(TARGET_ORDER))

    @model_validator(mode="after")
    def _supported(self) -> "Recipe":
        reason = unsupported_reason(self)
        if reason:
            raise ValueError(reason)
        return self

    @property
    def compressions(self) -> list[str]:
        return [k for k in ("prune", "palettize", "quantize") if getattr(self, k) is not None]


def unsupported_reason(recipe: Recipe) -> str | None:
    """Why a combination cannot be built for its target (None if it can)."""
    ios = TARGET_ORDER[recipe.target]
    q, p, pr = recipe.quantize, recipe.palettize, recipe.prune
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
    return None


class Entry(Recipe):
    """A matrix entry: a named recipe whose prune lists/schedules expand into several variants — or Core ML models
    made elsewhere (`package: PATH` or `packages: [PATH, …]`, relative to the matrix file), imported as variants
    (bench.build.imported) with an optional `name` (one package), `family` and `reference`."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=64)
    package: str | None = Field(None, min_length=1)
    packages: list[str] | None = Field(None, min_length=1)
    family: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=64)
    reference: bool = False

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
        recipe = [k for k in ("quantize", "palettize", "prune", "layers", "image_size", "decoder_length")
                  if getattr(self, k) is not None]
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
    resize: Literal["resize", "center_crop"] | None = None
    decoder_length: int | None = Field(None, ge=2, le=512)
    min_elements: int | None = Field(None, ge=0)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else _choice("deployment target", value, tuple(TARGET_ORDER))


class Matrix(_Strict):
    source: str = "builtin"
    defaults: Defaults = Defaults()
    variants: list[Entry] = Field(min_length=1)
    _base_dir: Path | None = PrivateAttr(default=None)  # the matrix file's folder: package paths are relative to it

    def package_path(self, planned: PlannedImport, workspace_root: Path) -> Path:
        path = Path(planned.path).expanduser()
        return path if path.is_absolute() else (self._base_dir or workspace_root) / path

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        # Merge defaults into each entry before validation, so a problem is reported at the entry's own line.
        if not isinstance(data, dict) or not isinstance(data.get("defaults", {}), dict):
            return data
        defaults = {k: v for k, v in (data.get("defaults") or {}).items() if k in Defaults.model_fields}
        variants = data.get("variants")
        if isinstance(variants, list):  # build defaults do not apply to imported packages
            data = {**data, "variants": [{**defaults, **v} if isinstance(v, dict) and not _names_package(v) else v
                                         for v in variants]}
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


def _names_package(entry: dict) -> bool:
    return "package" in entry or "packages" in entry


class PlannedVariant(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    recipe: Recipe


def _expand(entry: Entry) -> list[PlannedVariant]:
    body = entry.model_dump(exclude={"name", "package", "packages", "family", "reference"})
    if entry.prune is None or entry.prune.n_m is not None or entry.prune.sparsity is not None:
        return [PlannedVariant(name=entry.name, recipe=Recipe.model_validate(body))]
    variants = []
    for sparsity in entry.prune.expand():
        single = {**body, "prune": {"sparsity": sparsity}}
        variants.append(PlannedVariant(name=f"{entry.name}-{_short(sparsity)}", recipe=Recipe.model_validate(single)))
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
