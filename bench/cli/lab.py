"""`bench lab up | join | status`: a lab of many hosts on Ray (docs/lab.md). Only argument parsing and printing
live here; the work is bench.lab.cluster. Ray is imported only when one of these commands runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

TokenOption = Annotated[Path | None, typer.Option(
    "--token-file", help="The lab's token file, mode 600 (default: $BENCH_LAB_TOKEN_FILE or ~/.config/bench/lab-token).")]


def register(app: typer.Typer) -> None:
    lab = typer.Typer(help="A lab of many hosts: start the head, join hosts with their iPhones, see the lab.",
                      no_args_is_help=True)
    lab.command("up")(up_command)
    lab.command("join")(join_command)
    lab.command("status")(status_command)
    app.add_typer(lab, name="lab")


def _token(path: Path | None) -> Path:
    from bench.lab.cluster import default_token_file

    return (path or default_token_file()).expanduser()


def up_command(
    bind: Annotated[str, typer.Argument(help="HOST[:PORT] the head listens on (an address of this host; default port 6379).")],
    token_file: TokenOption = None,
) -> None:
    """Start the lab's head here (it schedules, it runs no jobs). Creates the token file when there is none."""
    from bench.cli._common import console
    from bench.lab.cluster import start_head

    token = _token(token_file)
    where = start_head(bind, token)
    console().print(f"lab head listening on {where} (token auth on; token file {token}).\n"
                    f"On each host with iPhones: copy the token file (mode 600), then `bench lab join {where}`.",
                    highlight=False)


def join_command(
    address: Annotated[str, typer.Argument(help="HOST[:PORT] of the lab head.")],
    token_file: TokenOption = None,
    inventory: Annotated[Path | None, typer.Option("--inventory", help="devices.yaml (default: <workspace>/devices.yaml).")] = None,
    node_ip: Annotated[str | None, typer.Option("--node-ip", help="This host's address the others reach it by (default: the one towards the head).")] = None,
) -> None:
    """Join this host to the lab, advertising every attached, healthy iPhone (one at a time each) and, on a Mac, Core
    ML itself (target macos-coreml)."""
    from bench.cli._common import console
    from bench.lab.cluster import join_lab, survey_phones, this_mac
    from bench.paths import Workspace

    devices_file = inventory or Workspace.current().devices_file
    loaded = None
    if devices_file.exists():
        from bench.deploy.inventory import load_inventory

        loaded = load_inventory(devices_file)
    phones, skipped = survey_phones(loaded)
    for line in skipped:
        console().print(f"[yellow]not offered:[/] {line}", highlight=False)
    mac = this_mac()
    joined = join_lab(address, _token(token_file), phones, node_ip=node_ip, mac=mac)
    if mac is not None:
        console().print(f"offering Core ML on this Mac (macOS {mac.os_version}, {mac.machine}) as macos-coreml",
                        highlight=False)
    for phone in joined:
        console().print(f"offering {phone.name} ({phone.udid}, {phone.model}, iOS build {phone.os_build}, "
                        f"runner {phone.runner_version})", highlight=False)


def status_command(
    address: Annotated[str, typer.Argument(help="HOST[:PORT] of the lab head.")],
    token_file: TokenOption = None,
) -> None:
    """Every host of the lab, its phones, their health (as `bench devices` sees it) and what each is running."""
    from rich.table import Table

    from bench.cli._common import console
    from bench.lab.cluster import connect, disconnect, lab_status

    connect(address, _token(token_file))
    try:
        hosts = lab_status()
    finally:
        disconnect()
    table = Table(title=f"lab {address}")
    for column in ("host", "alive", "phone", "udid", "model", "iOS build", "runner", "state"):
        table.add_column(column, overflow="fold")
    for host in hosts:
        alive = "[green]yes[/]" if host.alive else "[red]no[/]"
        if host.mac:
            table.add_row(host.host, alive, "macos-coreml", "", host.mac, "", "", "[green]offered[/]")
        if not host.phones and not host.mac:
            table.add_row(host.host, alive, "–", "", "", "", "", "")
        for phone in host.phones:
            state = f"running {phone['running']}" if phone["running"] else (phone["health"] or "unknown")
            colour = "green" if state == "ready" else ("cyan" if phone["running"] else "yellow")
            table.add_row(host.host, alive, phone["name"], phone["udid"], phone["model"] or "?",
                          phone["os_build"] or "?", phone["runner"] or "?", f"[{colour}]{state}[/]")
    console().print(table)
