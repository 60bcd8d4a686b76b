"""`bench devices`: the inventory against what is attached, with health; install the runner; list and prune what a
device holds. Only argument parsing and printing live here; the work is bench.deploy.api."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DeviceOption = Annotated[str | None, typer.Option(
    "--device", "-d", help="Inventory name or UDID (default: the only attached device).")]
InventoryOption = Annotated[Path | None, typer.Option(
    "--inventory", help="devices.yaml (default: <workspace>/devices.yaml).")]


def register(app: typer.Typer) -> None:
    devices = typer.Typer(help="iPhones: inventory, health, runner install, what each device holds.",
                          invoke_without_command=True, no_args_is_help=False)
    devices.callback()(overview_command)
    devices.command("prepare")(prepare_command)
    devices.command("install")(install_command)
    devices.command("ls-models")(list_command)
    devices.command("prune")(prune_command)
    devices.command("status")(status_command)
    app.add_typer(devices, name="devices")


def _inventory(path: Path | None):
    from bench.deploy.inventory import load_inventory
    from bench.paths import Workspace

    return load_inventory(path or Workspace.current().devices_file)


def overview_command(ctx: typer.Context, inventory: InventoryOption = None) -> None:
    """Attached devices against devices.yaml: trust, Developer Mode, disk image / tunnel, battery, runner."""
    if ctx.invoked_subcommand is not None:
        return
    from bench.cli._common import console
    from bench.deploy.api import survey
    from bench.report.escape import rich as esc  # names, notes and problems come from the phones themselves

    with console().status("asking usbmuxd and each device …"):
        result = survey(_inventory(inventory))
    if result.usbmux_problem:
        console().print(f"[yellow]{esc(result.usbmux_problem)}[/]", highlight=False)
    console().print(_table(result))
    for row in result.rows:  # one line each, never wrapped: scripts and people grep them
        name = esc(row.info.name or row.info.udid)
        lines = [f"[yellow]{name}[/]: {esc(problem)}" for problem in (row.health.problems if row.health else [])]
        lines += [f"[cyan]{name}[/]: note: {esc(note)}" for note in (row.health.notes if row.health else [])]
        lines += [f"[yellow]{name}[/]: reports {esc(row.info.mismatch)}"] if row.info.mismatch else []
        for line in lines:
            console().print(f"  {line}", highlight=False, soft_wrap=True)


def _yes_no(value) -> str:
    return "–" if value is None else ("[green]yes[/]" if value else "[red]no[/]")


def _mounted(value) -> str:
    return "?" if value is None else ("[green]mounted[/]" if value else "[red]not mounted[/]")


def _major(version: str) -> int:
    head = version.split(".")[0]
    return int(head) if head.isdigit() else 0


def _table(result):
    from rich.table import Table

    from bench.report.escape import rich as esc

    table = Table(title="iPhones", show_lines=False)
    for column in ("state", "name", "udid", "model", "iOS", "paired", "dev mode", "disk image", "tunnel", "battery",
                   "charging", "runner", "tags"):
        table.add_column(column, no_wrap=column in ("state", "name", "udid"), overflow="fold")
    colours = {"ready": "green", "attention": "yellow", "missing": "red", "unknown": "cyan", "gone": "red", "disabled": "dim"}
    for row in result.rows:
        info, health = row.info, row.health
        model = info.model_identifier or (f"({info.expected_model})" if info.expected_model else "")
        os_version = (f"{info.os_version} ({info.os_build})" if info.os_version and info.os_build else
                      info.os_version or (f"({info.expected_os})" if info.expected_os else ""))
        if health is None or not health.paired:
            image = tunnel = battery = charging = runner = "–"
            dev_mode = "–"
        else:
            image = (f"{health.disk_image} {_mounted(health.ddi_mounted)}" if health.disk_image else "?")
            tunnel = _yes_no(health.tunnel) if health.tunnel is not None else (
                "not needed" if info.os_version and _major(info.os_version) < 17 else "–")
            temperature = f" {health.battery_temperature_c:.1f}°C" if health.battery_temperature_c is not None else ""
            battery = f"{health.battery_percent}%{temperature}" if health.battery_percent is not None else "?"
            charging = _yes_no(health.charging)
            runner = (f"{health.runner.version} ({health.runner.build})" if health.runner else "[red]not installed[/]")
            dev_mode = _yes_no(health.developer_mode)
        if health is not None and health.paired:
            image = f"{esc(health.disk_image)} {_mounted(health.ddi_mounted)}" if health.disk_image else "?"
            runner = esc(f"{health.runner.version} ({health.runner.build})") if health.runner else runner
        table.add_row(f"[{colours[row.state]}]{row.state}[/]", esc(info.name or ""), esc(info.udid), esc(model),
                      esc(os_version), _yes_no(info.paired) if info.connected else "–", dev_mode, image, tunnel,
                      esc(battery), charging, runner, esc(",".join(info.tags) + ("" if info.enabled else " (disabled)")))
    return table


CHECK_MARKS = {"ok": "[green]✓[/]", "done": "[green]+[/]", "person": "[yellow]![/]", "failed": "[red]✗[/]",
               "skipped": "[dim]–[/]"}


def prepare_command(
    device: DeviceOption = None,
    inventory: InventoryOption = None,
    enable_developer_mode: Annotated[bool, typer.Option(
        "--enable-developer-mode", help="Ask the phone to turn Developer Mode on (it restarts; a person confirms; "
                                        "refused while a passcode is set).")] = False,
    launch_check: Annotated[bool, typer.Option(
        "--launch-check/--no-launch-check", help="Finish by launching the runner on a status job.")] = True,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the runner in the launch check.")] = 60.0,
) -> None:
    """Per phone: mount the disk image its iOS needs, check Developer Mode (offer to enable it), trust, tunnel,
    runner and a real launch; then print what remains for a person. Exit status 1 while anything remains."""
    from bench.cli._common import console
    from bench.deploy.api import phones_to_prepare, prepare
    from bench.report.escape import rich as esc

    phones = phones_to_prepare(device, _inventory(inventory))
    if not phones:
        raise typer.BadParameter("no iPhone attached: plug one in by USB and unlock it", param_hint="--device")
    remaining: list[str] = []
    for info in phones:
        name = esc(info.name or info.udid)
        console().print(f"[bold]{name}[/] {esc(info.udid)} {esc(info.model or '')} iOS {esc(info.os_version or '?')}",
                        highlight=False)
        with console().status(f"preparing {name} …"):
            report = prepare(info.udid, enable_developer_mode=enable_developer_mode, launch_check=launch_check,
                             timeout_s=timeout)
        for check in report.checks:
            console().print(f"  {CHECK_MARKS[check.status]} {esc(check.name)}: {esc(check.line)}", highlight=False,
                            soft_wrap=True)
        remaining += [f"{name}: {esc(line)}" for line in report.remaining]
    if remaining:
        console().print("[bold]What remains for a person:[/]")
        for line in remaining:
            console().print(f"  {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console().print(f"[green]{len(phones)} phone(s) ready[/]")


def install_command(
    package: Annotated[Path, typer.Argument(help="Runner .ipa file or .app directory (built by runner/build.sh).")],
    device: DeviceOption = None,
    inventory: InventoryOption = None,
) -> None:
    """Install or upgrade the benchmark runner."""
    from bench.cli._common import console
    from bench.deploy.api import install_runner, resolve_device

    udid = resolve_device(device, _inventory(inventory))
    with console().status(f"installing {package.name} on {udid} …"):
        app = install_runner(udid, package)
    from bench.report.escape import rich as esc

    console().print(esc(f"installed {app.bundle_id} {app.version} ({app.build}) on {udid}" if app else "installed"),
                    highlight=False)


def list_command(device: DeviceOption = None, inventory: InventoryOption = None) -> None:
    """What the runner's container holds: model packages (by content hash), inputs, jobs, results."""
    from bench.cli._common import console
    from bench.deploy.api import held, resolve_device

    udid = resolve_device(device, _inventory(inventory))
    holding = held(udid)
    from bench.report.escape import rich as esc  # file names listed by the phone

    console().print(f"{esc(udid)}: {len(holding.models)} model packages, {len(holding.inputs)} inputs, "
                    f"{len(holding.jobs)} jobs, {len(holding.results)} results, "
                    f"{len(holding.leftovers)} interrupted pushes", highlight=False)
    for sha in holding.models:
        console().print(f"  models/{esc(sha)}", highlight=False)


def prune_command(
    device: DeviceOption = None,
    inventory: InventoryOption = None,
    keep: Annotated[list[str] | None, typer.Option(
        "--keep", help="Also keep this model package hash (repeatable).")] = None,
    everything: Annotated[bool, typer.Option(
        "--all", help="Remove every model package, even those of local (built or imported) variants.")] = False,
    keep_jobs: Annotated[bool, typer.Option("--keep-jobs", help="Keep old jobs and results.")] = False,
) -> None:
    """Delete model packages no local variant uses, inputs, interrupted pushes, and old jobs/results."""
    from bench.cli._common import console
    from bench.deploy.api import prune, resolve_device, workspace_package_hashes
    from bench.paths import Workspace

    udid = resolve_device(device, _inventory(inventory))
    kept = set(keep or ()) | (set() if everything else workspace_package_hashes(Workspace.current()))
    removed = prune(udid, kept, set(), jobs=not keep_jobs)
    console().print(f"{udid}: removed {len(removed)} item(s)", markup=False, highlight=False)


def status_command(device: DeviceOption = None, inventory: InventoryOption = None,
                   timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the runner.")] = 120.0) -> None:
    """Thermal state (from the runner) and battery (from diagnostics) right now."""
    from bench.cli._common import console
    from bench.deploy.api import device_status, resolve_device

    udid = resolve_device(device, _inventory(inventory))
    status = device_status(udid, timeout)
    from bench.report.escape import rich as esc  # what the phone reports

    console().print(esc(f"{udid}: thermal {status.thermal_state}, battery {status.battery_level}, "
                        f"{status.battery_temperature_c} °C, {status.battery_state}, low power {status.low_power_mode}"),
                    highlight=False)
