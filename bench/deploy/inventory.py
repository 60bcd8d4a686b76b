"""devices.yaml: the lab's phones. Validated with pydantic; every problem is one "file:line: key: reason" line."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Modern UDIDs are "<8 hex>-<16 hex>"; older ones 40 hex digits.
_UDID = re.compile(r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{16}|[0-9A-Fa-f]{40})$")
_PRODUCT_TYPE = re.compile(r"^(iPhone|iPad|iPod)\d+,\d+$")
_IOS = re.compile(r"^\d+(\.\d+){0,2}$")
_BUILD = re.compile(r"^\d{2}[A-Z]\d{1,5}[a-z]?$")  # iOS build numbers: 20H115, 21F90, 22A3354


class InventoryDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    udid: str
    model: str  # expected ProductType, e.g. iPhone15,2
    ios: str  # expected iOS version prefix, e.g. "17" or "17.5"
    build: str | None = None  # the iOS build the lab benchmarks on, e.g. 21F90: a different one means it updated
    tags: list[str] = Field(default_factory=list)
    enabled: bool = True
    notes: str = ""

    @field_validator("udid")
    @classmethod
    def _udid(cls, value: str) -> str:
        if not _UDID.match(value):
            raise ValueError("not a UDID (expected 00008110-001A2B3C4D5E6F70 or 40 hex digits; "
                             "`pymobiledevice3 usbmux list` shows it)")
        return value.upper() if "-" in value else value.lower()

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not _PRODUCT_TYPE.match(value):
            raise ValueError("expected a ProductType such as iPhone15,2 (not a marketing name)")
        return value

    @field_validator("ios", mode="before")
    @classmethod
    def _ios(cls, value) -> str:
        if isinstance(value, float):  # YAML already turned 16.10 into 16.1: the text the user wrote is gone
            raise ValueError(f'write the version in quotes (ios: "{value}"): unquoted, YAML reads 16.10 as the number 16.1')
        text = str(value)
        if not _IOS.match(text):
            raise ValueError("expected an iOS version such as 17 or 17.5")
        return text

    @field_validator("build", mode="before")
    @classmethod
    def _build(cls, value) -> str | None:
        if value is None:
            return None
        if not _BUILD.match(str(value)):
            raise ValueError("expected an iOS build such as 21F90 (`bench devices` shows it next to the version)")
        return str(value)

    def mismatch(self, product_type: str | None, os_version: str | None, os_build: str | None = None) -> str | None:
        """What differs between this entry and what the device reports, or None."""
        problems = []
        if product_type and product_type != self.model:
            problems.append(f"model {product_type} (inventory says {self.model})")
        if os_version and not (os_version == self.ios or os_version.startswith(self.ios + ".")):
            problems.append(f"iOS {os_version} (inventory says {self.ios})")
        if os_build and self.build and os_build != self.build:
            problems.append(f"iOS build {os_build} (inventory says {self.build}): the phone updated, so its runs are "
                            "not compared with earlier ones unless forced; turn automatic updates off, run `bench "
                            "devices prepare`, then set build: in devices.yaml")
        return "; ".join(problems) or None


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[InventoryDevice] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "Inventory":
        for key in ("udid", "name"):
            seen: set[str] = set()
            for device in self.devices:
                value = getattr(device, key)
                if value in seen:
                    raise ValueError(f"two devices share the {key} {value!r}")
                seen.add(value)
        return self

    def by_udid(self, udid: str) -> InventoryDevice | None:
        return next((d for d in self.devices if d.udid == udid), None)

    def by_name(self, name: str) -> InventoryDevice | None:
        return next((d for d in self.devices if d.name == name), None)

    def select(self, *, tag: str | None = None, include_disabled: bool = False) -> list[InventoryDevice]:
        return [d for d in self.devices if (include_disabled or d.enabled) and (tag is None or tag in d.tags)]


def load_inventory(path: Path | str) -> Inventory:
    """Parse and validate devices.yaml (InputError with file:line on any problem). A missing file is empty."""
    from bench.yamlconf import load_yaml

    path = Path(path)
    if not path.exists():
        return Inventory()
    return load_yaml(path, Inventory)
