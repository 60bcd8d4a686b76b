"""Reproduce the seed's size table: BLIP-base through our builder, side by side with the published figures.

    python benchmarks/seed_sizes.py [--workdir DIR] [--keep]

Size depends on the architecture, not on the values, so the model is BLIP-base's architecture (default
BlipConfig) with random weights (vision initializer_range 0.02 so fp16 does not flush them to zero). It takes
minutes (two ~250 M-parameter conversions and eleven variants) and several GB of temporary disk; a benchmark,
not a test. The printed table is kept in benchmarks/results/seed_sizes.txt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The seed's published figures (MB as printed; Living on the Edge, quantization and pruning tables), kept once as data
# with their sources in bench/report/seed_published.json (the report's side-by-side section reads the same file).
from bench.report.seed import load_published  # noqa: E402  (after the sys.path line above)

SEED_MB = {row["variant"]: row["size_mb"] for row in load_published()["rows"]}
MATRIX = {
    "defaults": {"target": "iOS17"},
    "variants": [
        {"name": "fp32"},
        {"name": "fp16", "precision": "fp16"},
        {"name": "int8", "quantize": {"bits": 8}},
        {"name": "prune", "prune": {"schedule": {"step": 0.2, "iterations": 5}}},
        {"name": "conv-prune", "prune": {"sparsities": [0.2, 0.4]}, "layers": {"select": "conv"}},
        {"name": "embedding-prune", "prune": {"sparsities": [0.2, 0.4]}, "layers": {"select": "embedding"}},
    ],
}


def save_blip_base(directory: Path, max_length: int = 20) -> Path:
    """BLIP-base architecture, random weights, saved as a checkpoint load_captioner accepts (no hub access)."""
    import json

    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BlipConfig(vision_config={"initializer_range": 0.02})
    model = BlipForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    model.save_pretrained(directory)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    (directory / "vocab.txt").write_text("\n".join(specials + ["a", "photo", "of"]) + "\n", encoding="utf-8")
    BertTokenizer(str(directory / "vocab.txt"), bos_token="[DEC]").save_pretrained(directory)
    (directory / "bench_captioner.json").write_text(json.dumps({"name": "blip-base-random",
                                                                "decode": {"max_length": max_length}}))
    return directory


def explain(name: str, measured: dict, seed_mb: float, embedding_bytes: int) -> str:
    """One line of residual per row (the reasoning follows the table: `analysis`)."""
    ours = measured["total_bytes"] / 1e6
    if name == "fp32" or name.startswith("prune-"):
        return (f"seed {seed_mb - ours:+.1f} MB: its fp32-derived packages hold the tied word embedding twice "
                f"({embedding_bytes / 1e6:.1f} MB fp32 here, stored once); sparse = (1-s)*4 B + 1-bit mask")
    if name in ("fp16", "int8"):
        return f"seed {seed_mb - ours:+.1f} MB: same content (no duplicate embedding in the seed's {name} package)"
    if name.startswith("conv-"):
        return "BLIP-base's only conv is the patch embedding (0.59 M weights); the seed's conv rows copy its embedding rows"
    return "word + position embeddings pruned, one copy; the seed's fp32 package had two"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the built variants")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-seed-sizes-"))
    import coremltools

    print(f"# python benchmarks/seed_sizes.py — {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, torch threads "
          f"{args.threads}, coremltools {coremltools.__version__}, torch {torch.__version__}, "
          f"target {MATRIX['defaults']['target']}; stdout of the script, kept as benchmarks/results/seed_sizes.txt")
    try:
        started = time.perf_counter()
        checkpoint = save_blip_base(work / "blip-base-random")
        params = sum(p.numel() for p in __import__("bench.train.captioner", fromlist=["x"]).load_captioner(
            checkpoint).model.parameters())
        print(f"BLIP-base (random weights): {params:,} parameters = {params * 4 / 1e6:.1f} MB in fp32", flush=True)

        def progress(event):  # progress is not part of the result: stderr
            if event.kind != "step":
                print(f"  [{time.perf_counter() - started:7.1f} s] {event.kind} {event.name} {event.detail}",
                      file=sys.stderr, flush=True)

        report = build_matrix(matrix_from_dict({"source": str(checkpoint), **MATRIX}), work, progress=progress)
        print_table(report, params)
        print(f"\nbuilt {len(report.results)} variants in {report.seconds:.0f} s "
              f"(torch threads {args.threads}); failed: {[(r.name, r.error) for r in report.failed] or 'none'}")
        print()
        print("\n".join(analysis(report)))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(report, params: int) -> None:
    rows = []
    embedding_bytes = 0
    for result in report.results:
        if result.manifest is None:
            continue
        for t in result.manifest.measured["tensors"]:
            if "word_embeddings" in t["name"] and result.name == "fp32":
                embedding_bytes = t["bytes"]
    header = (f"\n{'variant':<22}{'seed MB':>9}{'ours MB':>10}{'ours MiB':>10}{'ratio':>7}{'enc MB':>9}{'dec MB':>9}"
              f"{'sparsity':>10}{'sel.sp.':>9}{'bits/w':>8}{'dup MB':>8}  residual")
    print(header)
    print("-" * len(header))
    for result in report.results:
        seed = SEED_MB.get(result.name)
        if result.manifest is None:
            print(f"{result.name:<22}{seed or '':>9}  FAILED: {result.error}")
            continue
        m = result.manifest.measured
        ours = m["total_bytes"] / 1e6
        duplicated = sum(d["bytes"] for d in m["duplicated_tensors"]) / 1e6
        enc, dec = (result.manifest.packages[p].bytes / 1e6 for p in ("encoder", "decoder"))
        rows.append(result.name)
        print(f"{result.name:<22}{seed:>9.2f}{ours:>10.2f}{m['total_bytes'] / 2**20:>10.2f}{ours / seed:>7.3f}"
              f"{enc:>9.2f}{dec:>9.2f}{m['sparsity'] * 100:>9.1f}%{m['selected_sparsity'] * 100:>8.1f}%"
              f"{m['bits_per_weight']:>8.2f}{duplicated:>8.1f}  {explain(result.name, m, seed, embedding_bytes)}")
    print(f"\nparameters {params:,}: fp32 {params * 4 / 1e6:.1f} MB / {params * 4 / 2**20:.1f} MiB; "
          f"fp16 {params * 2 / 1e6:.1f} MB; int8 {params / 1e6:.1f} MB (+ per-channel scales)")


def _tensor_bytes(manifest, *words: str) -> int:
    return sum(t["bytes"] for t in manifest.measured["tensors"] if all(w in t["name"] for w in words))


def _tensor_elements(manifest, *words: str) -> int:
    return sum(int(t.get("params") or 0) for t in manifest.measured["tensors"] if all(w in t["name"] for w in words))


def analysis(report) -> list[str]:
    """The residuals explained, every figure computed from this build (no hand-written numbers)."""
    built = {r.name: r.manifest for r in report.results if r.manifest is not None}
    mb = {name: m.measured["total_bytes"] / 1e6 for name, m in built.items()}
    lines = ["# Residual explained (computed from the table above)"]
    lines.append(f"# - Units: \"ours MB\" is decimal MB (1e6 bytes) of both .mlpackage directories, like the seed's "
                 f"figures; \"ours MiB\" shows the {1 - 1e6 / 2**20:.1%} a MiB-vs-MB mix-up would cost. The seed "
                 "exported one model; every seed figure is compared with our encoder + decoder sum.")
    if "fp32" in built:
        fp32 = built["fp32"]
        residual = SEED_MB["fp32"] - mb["fp32"]
        embedding = _tensor_bytes(fp32, "word_embeddings") / 1e6
        duplicated = sum(d["bytes"] for d in fp32.measured["duplicated_tensors"]) / 1e6
        position = _tensor_bytes(fp32, "position_embeddings") / 1e6  # the text one (vision: position_embedding)
        position_rows = _tensor_elements(fp32, "position_embeddings") // 768 if position else 0
        position_full = 512 * 768 * 4 / 1e6
        sliced = position_full - position if position else 0.0
        lines.append(f"# - fp32: {SEED_MB['fp32']:.2f} - {mb['fp32']:.2f} = {residual:.1f} MB. The tied word embedding "
                     f"is {embedding:.1f} MB here, stored once (duplicated tensors found: {duplicated:.1f} MB); a "
                     f"second copy in the seed's package explains {min(embedding, residual):.1f} MB of it.")
        if position:
            lines.append(f"#   Our text position embedding is sliced to the decoder length ({position_rows} of 512 "
                         f"rows): {-sliced:+.1f} MB. Unattributed: {residual - embedding - sliced:+.1f} MB.")
    for name in ("fp16", "int8"):
        if name in built:
            lines.append(f"# - {name}: ratio {mb[name] / SEED_MB[name]:.3f}, {SEED_MB[name] - mb[name]:+.1f} MB: the "
                         f"seed's {name} package did not carry the duplicate; bits/weight "
                         f"{built[name].measured['bits_per_weight']:.2f}.")
    pruned = sorted((n for n in built if n.startswith("prune-")), key=lambda n: float(n.split("-")[1]))
    if pruned and "fp32" in built:
        ratios = [mb[n] / SEED_MB[n] for n in pruned]
        fp32_ratio = mb["fp32"] / SEED_MB["fp32"]
        lines.append(f"# - Pruning {pruned[0][6:]} -> {pruned[-1][6:]}: ratios {min(ratios):.3f} .. {max(ratios):.3f} "
                     f"vs fp32's {fp32_ratio:.3f}: the seed's pruned packages shrink from its fp32 package exactly "
                     "like ours from ours.")
        first = pruned[0]
        sparsity = float(first.split("-")[1])
        model = 1 - sparsity + 1 / 32
        lines.append(f"#   Sparse storage = (1-s) x 4 B + 1-bit mask per weight: at {sparsity:.0%} that is {model:.4f} "
                     f"of dense; ours {mb[first] / mb['fp32']:.4f}, seed {SEED_MB[first] / SEED_MB['fp32']:.4f}. "
                     "Measured sparsity of the pruned layers: "
                     + ", ".join(f"{n[6:]} -> {built[n].measured['selected_sparsity']:.1%}" for n in pruned) + ".")
    for kind in ("conv", "embedding"):
        names = [n for n in built if n.startswith(f"{kind}-prune-")]
        if names and "fp32" in built:
            saved = "; ".join(f"{n.rsplit('-', 1)[1]}: ours {mb['fp32'] - mb[n]:.1f} MB, seed "
                              f"{SEED_MB['fp32'] - SEED_MB[n]:.1f} MB" for n in names)
            lines.append(f"# - {kind} pruning saves {saved}.")
    conv = [n for n in built if n.startswith("conv-prune-")]
    embedding_rows = [n for n in built if n.startswith("embedding-prune-")]
    if conv and embedding_rows and all(SEED_MB[c] == SEED_MB[e] for c, e in zip(conv, embedding_rows)):
        weights = _tensor_elements(built["fp32"], "patch_embedding") / 1e6
        lines.append(f"#   The seed printed identical sizes for conv and embedding pruning; BLIP-base's only conv "
                     f"is the patch embedding ({weights:.2f} M weights), so the seed's conv rows can only be a copy "
                     "of its embedding rows.")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
