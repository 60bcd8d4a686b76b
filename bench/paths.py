"""Where things live. The workspace root is $BENCH_ROOT, else the current directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
# The trained built-in captioner ships with the project (weights + the seeded script that made them).
BUILTIN_CAPTIONER_DIR = PROJECT_DIR / "models" / "builtin-captioner"
# Matrix `source:` names of the shipped captioners (base and the seed's base-vs-large axis), each with its folder.
BUILTIN_SOURCES = {"builtin": "base", "builtin-large": "large"}


def builtin_captioner_dir(size: str = "base") -> Path:
    return BUILTIN_CAPTIONER_DIR if size == "base" else PROJECT_DIR / "models" / f"builtin-captioner-{size}"
DEFAULT_MATRIX = PROJECT_DIR / "models" / "matrix.yaml"
RUNNER_DIR = PROJECT_DIR / "runner"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def current(cls) -> "Workspace":
        return cls(Path(os.environ.get("BENCH_ROOT", os.getcwd())).resolve())

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def variants_dir(self) -> Path:
        return self.models_dir / "variants"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def evals_dir(self) -> Path:
        return self.results_dir / "evals"

    @property
    def history_db(self) -> Path:
        return self.results_dir / "history.duckdb"

    @property
    def devices_file(self) -> Path:
        return self.root / "devices.yaml"
