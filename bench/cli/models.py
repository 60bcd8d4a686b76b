"""`bench models build|ls|inspect|diff`: the Core ML variant builder. Parsing and printing only; work is bench.build."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

models_app = typer.Typer(help="Build, import, list, inspect and compare compressed Core ML variants.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _mb(value: int | float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@models_app.command("build")
def build_command(
    arguments: Annotated[list[str] | None, typer.Argument(
        metavar="[MATRIX] [NAMES]...",
        help="Matrix YAML (default: models/matrix.yaml for the built-in captioner), then variant names to build "
             "(default: all).")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Build only these variant names (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the named variants (all without names) even when cached.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Rehash every byte of cached variants (default: size + "
                                                         "timestamps, hashing only what changed).")] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
) -> None:
    """Build every variant of a compression matrix; cached variants are checked and reused, damaged ones rebuilt."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.build.builder import build_matrix
    from bench.build.matrix import load_matrix
    from bench.cli._common import console
    from bench.errors import InputError, did_you_mean
    from bench.paths import DEFAULT_MATRIX, Workspace
    from bench.report.escape import rich as esc

    matrix, names = _matrix_and_names(arguments or [])
    loaded = load_matrix(matrix or DEFAULT_MATRIX)  # every YAML problem fails here, before any work
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    selected = [*(only or []), *names] or None
    names_of = [p.name for p in loaded.planned()] + [i.label for i in loaded.imports()]
    known = set(names_of)
    for name in selected or ():  # before the progress bar starts: a typo is one line, not a bar and then a line
        if name not in known:
            raise did_you_mean("variant name", name, known)
    total = len(names_of if not selected else [n for n in names_of if n in selected])
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console(), transient=False) as bar:
        task = bar.add_task("building", total=total)

        def on_event(event) -> None:
            if event.kind == "start":
                bar.update(task, description=esc(event.name))
            elif event.kind == "step":
                bar.update(task, description=esc(f"{event.name}: {event.detail}"))
            elif event.kind == "done":
                bar.update(task, advance=1, description=esc(f"{event.name}: {event.detail}"))

        report = build_matrix(loaded, Workspace.current(), progress=on_event, only=selected,
                              force=force, verify=verify)
    _print_report(report)
    if report.failed:
        raise typer.Exit(code=1)


@models_app.command("import")
def import_command(
    paths: Annotated[list[Path], typer.Argument(help=".mlpackage folders or .mlmodel files made by any pipeline.")],
    name: Annotated[str | None, typer.Option("--name", help="Variant name (default: the file's name; one PATH only).")] = None,
    family: Annotated[str | None, typer.Option("--family", help="Family grouping variants of one model (default: the "
                                                               "name); drift is measured against its reference.")] = None,
    reference: Annotated[bool, typer.Option("--reference", help="Make this the family's reference (default: the least "
                                                               "compressed member).")] = False,
    captioner: Annotated[Path | None, typer.Option(
        "--captioner", help="PATHs are an encoder and a decoder .mlpackage; this folder holds their tokenizer and "
                            "image processor config: measured like a built captioner, captions decoded on the "
                            "device.")] = None,
) -> None:
    """Register Core ML models made elsewhere as variants: stored by content hash, analysed like built ones."""
    from bench.build.imported import families, import_captioner, import_models
    from bench.cli._common import console, table
    from bench.errors import InputError
    from bench.paths import Workspace

    workspace = Workspace.current()
    if captioner is not None:
        if len(paths) != 2:
            raise InputError(f"--captioner imports one encoder/decoder pair: give ENCODER.mlpackage DECODER.mlpackage "
                             f"({len(paths)} path{'s' if len(paths) != 1 else ''} given)")
        results = [import_captioner(paths[0], paths[1], captioner, workspace, name=name, family=family,
                                    reference=reference)]
    else:
        results = import_models(list(paths), workspace, name=name, family=family, reference=reference)
    references = {f: info["reference"] for f, info in families(workspace).items()}
    rows = []
    for result in results:
        m = result.manifest
        measured = m["measured"]
        rows.append([result.variant_id, result.status, m["family"],
                     "yes" if references.get(m["family"]) == result.variant_id else "", _mb(measured["total_bytes"]),
                     _pct(measured["sparsity"]), f"{measured['bits_per_weight']:.2f}", _functions(m)])
    console().print(table("imported", ("variant", "status", "family", "reference", "size MB", "sparsity", "bits/w",
                                       "functions · inputs"), rows, numeric=("size MB", "sparsity", "bits/w")))
    _print_measuring_hint(workspace, console())


def _functions(manifest: dict[str, Any]) -> str:
    """`main: x float32[1,3,8,8]` per function, states marked; the shapes as the model declares them."""
    interface = manifest["interface"]
    parts = []
    for function, io in interface["functions"].items():
        inputs = ", ".join(_feature_text(f) for f in io["inputs"])
        states = f" +state {', '.join(s['name'] for s in io['states'])}" if io["states"] else ""
        parts.append(f"{function}: {inputs}{states}")
    return "; ".join(parts)


def _feature_text(feature: dict[str, Any]) -> str:
    if feature["kind"] == "multiarray":
        shape = "×".join(map(str, feature["shape"]))
        flexible = " (enumerated)" if feature.get("enumerated_shapes") else " (range)" if feature.get("shape_range") else ""
        return f"{feature['name']} {feature['dtype']}[{shape}]{flexible}"
    if feature["kind"] == "image":
        return f"{feature['name']} image {feature['width']}×{feature['height']} {feature['color_space']}"
    return f"{feature['name']} {feature.get('dtype', feature['kind'])}"


def _print_measuring_hint(workspace, out) -> None:
    """Part of every import: what can be done here and what needs Core ML (one line)."""
    import platform

    from bench.build.imported import MEASURE_NEEDS
    from bench.run.targets import connected_iphones

    if platform.system() != "Darwin" and not connected_iphones(workspace):
        out.print(f"static analysis: `bench models inspect NAME`, `bench models diff A B`; {MEASURE_NEEDS} — "
                  "neither is here", highlight=False, soft_wrap=True)


def _matrix_and_names(arguments: list[str]) -> tuple[Path | None, list[str]]:
    """`[MATRIX] [NAMES]...`: the first argument is the matrix when it is a YAML file name or an existing file."""
    if arguments and (arguments[0].endswith((".yaml", ".yml")) or Path(arguments[0]).is_file()):
        return Path(arguments[0]), arguments[1:]
    return None, arguments


def _print_report(report) -> None:
    from bench.cli._common import console, table
    from bench.report.escape import rich as esc

    columns = ("variant", "status", "size MB", "weights MB", "sparsity", "bits/w", "target", "seconds")
    rows = []
    for result in report.results:
        m = result.manifest
        measured = m.measured if m else {}
        rows.append([result.variant_id, result.status, _mb(measured.get("total_bytes")),
                     _mb(measured.get("weight_bytes")), _pct(measured.get("sparsity")) if m else "-",
                     f"{measured['bits_per_weight']:.2f}" if m else "-", m.target if m else "-",
                     f"{result.seconds:.2f}"])
    console().print(table(f"variants ({report.seconds:.1f} s)", columns, rows,
                          numeric=("size MB", "weights MB", "sparsity", "bits/w", "seconds")))
    for result in report.of("rebuilt"):
        console().print(f"[yellow]rebuilt[/] {esc(result.name)}: {esc(result.note)}", highlight=False, soft_wrap=True)
    for result in report.failed:
        console().print(f"[bold red]failed[/] {esc(result.name)}: {esc(result.error)}", highlight=False, soft_wrap=True)


@models_app.command("ls")
def ls_command() -> None:
    """List built variants: size, measured sparsity and bits per weight, target."""
    from bench.build.variants import list_variants
    from bench.cli._common import console, table
    from bench.paths import Workspace
    from bench.report.escape import rich as esc

    unreadable: dict[str, str] = {}
    variants = list_variants(Workspace.current(), unreadable=unreadable)
    imported = _list_imported(unreadable)
    if not variants and not unreadable and not imported:
        console().print("no variants yet; build some with `bench models build` or import your own with "
                        "`bench models import PATH`")
        return
    columns = ("variant", "size MB", "weights MB", "sparsity", "pruned-layer sparsity", "bits/w", "target", "image",
               "decompression ops")
    rows = []
    for v in variants:
        m = v.measured
        rows.append([v.variant_id, _mb(m["total_bytes"]), _mb(m["weight_bytes"]), _pct(m["sparsity"]),
                     _pct(m.get("selected_sparsity")) if v.recipe.get("prune") else "-",
                     f"{m['bits_per_weight']:.2f}", v.target, f"{v.image_size} {v.resize}",
                     ", ".join(f"{k.removeprefix('constexpr_')}×{n}" for k, n in m["decompression_ops"].items()) or "-"])
    if rows:
        console().print(table(None, columns, rows, numeric=columns[1:6]))
    if imported:
        console().print(_imported_table(imported))
    for problem in unreadable.values():
        console().print(f"[bold red]unreadable[/] {esc(problem)}", highlight=False, soft_wrap=True)


def _list_imported(unreadable: dict[str, str]) -> list[dict[str, Any]]:
    from bench.build.imported import list_imported
    from bench.paths import Workspace

    return list_imported(Workspace.current(), unreadable=unreadable)


def _imported_table(imported: list[dict[str, Any]]):
    from bench.build.imported import families
    from bench.cli._common import table
    from bench.paths import Workspace

    references = {f: info["reference"] for f, info in families(Workspace.current()).items()}
    columns = ("imported variant", "family", "reference", "size MB", "weights MB", "sparsity", "bits/w",
               "decompression ops", "from")
    rows = []
    for m in imported:
        measured = m["measured"]
        rows.append([m["variant_id"], m["family"], "yes" if references.get(m["family"]) == m["variant_id"] else "",
                     _mb(measured["total_bytes"]), _mb(measured["weight_bytes"]), _pct(measured["sparsity"]),
                     f"{measured['bits_per_weight']:.2f}",
                     ", ".join(f"{k.removeprefix('constexpr_')}×{n}" for k, n in measured["decompression_ops"].items())
                     or "-", m["provenance"]["source_path"]])
    return table(None, columns, rows, numeric=("size MB", "weights MB", "sparsity", "bits/w"))


@models_app.command("verify")
def verify_command(
    names: Annotated[list[str] | None, typer.Argument(help="Variant names, ids or id prefixes (default: all).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Rehash every byte (default: size + timestamps, hashing only "
                                                      "files that changed since their last check).")] = False,
) -> None:
    """Check stored variants against the hashes recorded when they were built; exit 1 when any is damaged."""
    from bench.build.integrity import verify_workspace
    from bench.cli._common import console
    from bench.errors import DamagedError, InputError
    from bench.paths import Workspace

    from bench.report.escape import rich as esc

    from bench.build.imported import verify_imported

    out = console()
    try:
        results = verify_workspace(Workspace.current(), names or None, full=full)
    except InputError:  # none of the names is a built variant: they may all be imported ones
        results = []
    results += verify_imported(Workspace.current(), names or None, full=full)
    if names and not results:
        results = verify_workspace(Workspace.current(), names, full=full)  # the built variants' did-you-mean
    if not results:
        out.print("no variants yet; build some with `bench models build`")
        return
    for variant_id, outcome in results:
        if isinstance(outcome, DamagedError):
            out.print(f"[bold red]DAMAGED[/] {esc(variant_id)}: {esc(outcome)}", highlight=False, soft_wrap=True)
        else:
            out.print(f"[green]ok[/] {esc(variant_id)}: {outcome.trusted + outcome.hashed} files, "
                      f"{outcome.bytes_hashed / 1e6:.1f} MB hashed", highlight=False)
    if any(isinstance(outcome, DamagedError) for _, outcome in results):
        raise typer.Exit(code=1)


def _analyses(argument: str) -> tuple[str, dict[str, Any]]:
    """Analyse a variant (id, name, directory) or a single .mlpackage, straight from the stored bytes."""
    from bench.build.analyze import analyze_package
    from bench.build.integrity import check_variant
    from bench.build.imported import check_imported, find_imported, stored_path
    from bench.build.variants import PACKAGES, load_variant
    from bench.errors import InputError
    from bench.paths import Workspace

    path = Path(argument)
    if path.suffix == ".mlpackage" or (path.is_dir() and (path / "Manifest.json").is_file()):
        return str(path), {path.stem: analyze_package(path)}
    try:
        manifest = load_variant(argument, Workspace.current())
    except InputError as err:  # not a built variant: an imported one, else the built variants' did-you-mean
        imported = find_imported(argument, Workspace.current())
        if imported is None and str(err).startswith("unknown variant"):  # suggest among both kinds
            raise _unknown_variant(argument) from None
        if imported is None:
            raise
    else:
        check_variant(manifest)  # the stored bytes must still be the ones built
        return manifest.variant_id, {p: analyze_package(manifest.package_path(p), package=p) for p in PACKAGES}
    check_imported(imported["directory"])  # the stored bytes must still be the ones imported
    if imported.get("captioner"):  # an encoder/decoder pair: both packages, as for a built variant
        return imported["variant_id"], {p: analyze_package(Path(imported["directory"]) / f"{p}.mlpackage", package=p)
                                        for p in PACKAGES}
    if imported["package"]["format"] != "mlpackage" or imported["interface"]["model_type"] != "mlProgram":
        raise InputError(f"{imported['variant_id']}: a {imported['interface']['model_type']} model; only ML "
                         "programs (.mlpackage) are analysed per tensor — `bench models ls` shows its bytes and "
                         "layer types")
    return imported["variant_id"], {"model": analyze_package(stored_path(imported), package="model")}


def _unknown_variant(argument: str) -> Exception:
    """did-you-mean over built and imported variants (names and ids); with none at all, how to get some."""
    from bench.build.imported import list_imported
    from bench.build.variants import list_variants
    from bench.errors import InputError, did_you_mean
    from bench.paths import Workspace

    workspace = Workspace.current()
    unreadable: dict[str, str] = {}
    known = [n for m in list_variants(workspace) for n in (m.name, m.variant_id)]
    known += [n for m in list_imported(workspace, unreadable=unreadable) for n in (m["name"], m["variant_id"])]
    damaged = [why for folder, why in unreadable.items() if folder == argument or folder.startswith(f"{argument}-")]
    if damaged:  # there, but its manifest cannot be read: say so, not "unknown"
        return InputError(f"{damaged[0]} — import it again with `bench models import`")
    if not known:
        return InputError(f"unknown variant {argument!r}: none built or imported in {workspace.models_dir}; "
                          "`bench models build`, or `bench models import PATH` for your own")
    return did_you_mean("variant", argument, known)


@models_app.command("inspect")
def inspect_command(
    variant: Annotated[str, typer.Argument(help="Variant id, name, directory, or an .mlpackage path.")],
    tensors: Annotated[bool, typer.Option("--tensors/--no-tensors", help="Show every weight tensor.")] = True,
) -> None:
    """Static analysis of the stored packages: bytes, op types, decompression ops, per-tensor storage."""
    from bench.cli._common import console, table
    from bench.report.escape import rich as esc

    title, analyses = _analyses(variant)
    out = console()
    out.print(f"[bold]{esc(title)}[/]", highlight=False)
    for name, a in analyses.items():
        out.print(f"\n[bold]{esc(name)}[/] {esc(a.path)}: {_mb(a.bytes)} MB on disk, weight.bin {_mb(a.weight_bytes)} "
                  f"MB, opset {esc(a.opset)}, {a.params:,} weights, {a.nonzero_params:,} non-zero", highlight=False)
        out.print(esc("  inputs " + ", ".join(f"{k}{v}" for k, v in a.inputs.items())
                      + "; outputs " + ", ".join(f"{k}{v}" for k, v in a.outputs.items())
                      + ("; states (Core ML state, float16) " + ", ".join(f"{k}{v}" for k, v in a.states.items())
                         if getattr(a, "states", None) else "")), highlight=False)
        ops = sorted(a.op_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out.print(table("op types", ("op", "count"), ops, numeric=("count",), show_edge=False))
        for d in a.duplicated_tensors:
            out.print(f"  [yellow]stored twice:[/] {esc(d['name'])} = {esc(d['same_as'])} ({_mb(d['bytes'])} MB)",
                      highlight=False)
        if tensors:
            columns = ("name", "shape", "dtype", "storage", "bytes", "sparsity", "bits", "unique", "read by")
            rows = [[t.name, "×".join(map(str, t.shape)), t.dtype, t.storage, f"{t.bytes:,}", _pct(t.sparsity),
                     f"{t.bits:.2f}", "-" if t.unique_values is None else str(t.unique_values),
                     ",".join(t.child_op_types)] for t in a.tensors]
            out.print(table("weight tensors", columns, rows, numeric=("bytes", "sparsity", "bits", "unique"),
                            show_edge=False))


@models_app.command("diff")
def diff_command(
    a: Annotated[str, typer.Argument(help="First variant (id, name or directory).")],
    b: Annotated[str, typer.Argument(help="Second variant.")],
) -> None:
    """What changed between two variants: bytes, op types, decompression ops, tensor storage formats."""
    from bench.build.diff import diff_analyses
    from bench.cli._common import console, table
    from bench.report.escape import rich as esc

    name_a, first = _analyses(a)
    name_b, second = _analyses(b)
    result = diff_analyses(first, second)
    out = console()
    out.print(f"[bold]{esc(name_a)}[/] → [bold]{esc(name_b)}[/]", highlight=False)
    out.print(table(None, ("what", "A", "B", "change"), result, show_edge=False))
