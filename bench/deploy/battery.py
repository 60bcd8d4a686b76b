"""Battery and power from diagnostics_relay (IOPMPowerSource). iOS exposes no thermal state here: only the runner can
read ProcessInfo.thermalState, so thermal gating uses a "status" job (bench.deploy.api.device_status)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Battery:
    level_percent: int | None
    temperature_c: float | None  # IOPMPowerSource Temperature is in centi-degrees Celsius
    charging: bool | None
    external_power: bool | None
    voltage_mv: int | None


async def read_battery(lockdown) -> Battery:
    from pymobiledevice3.services.diagnostics import DiagnosticsService

    async with DiagnosticsService(lockdown) as diagnostics:
        source = await diagnostics.get_battery() or {}
    temperature = source.get("Temperature")
    return Battery(
        level_percent=source.get("CurrentCapacity"),
        temperature_c=round(temperature / 100.0, 2) if isinstance(temperature, int | float) else None,
        charging=source.get("IsCharging"),
        external_power=source.get("ExternalConnected"),
        voltage_mv=source.get("Voltage"),
    )
