"""docs/reproduce-seed.md works as written: its `bench …` commands run, in the doc's order, through bench's own CLI in a
workspace laid out as the doc says — `models/blip-image-captioning-base/` (the tiny BLIP fixture in
Salesforce/blip-image-captioning-base's file layout, tests/train_fixtures.py) and `data/flickr30k/` (Karpathy's
split file + an image folder of landscape JPEGs) — with the shipped `models/seed-matrix.yaml` and
`models/seed-run.yaml`.

What the test changes, because a test cannot have it: the fine-tune runs 2 steps instead of 1,250; there is no
iPhone, so `bench devices` is only checked to exist and the run uses the doc's own no-phone form (`--targets
host-torch --compute-units cpuOnly`) with one fixed round. The tiny checkpoint is 64 wide (not the shared fixture's
32) so that its word embedding (40 x 64) is large enough to be compressed at all, as the embedding-only rows need.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reproduce-seed.md"
AFFORDABLE = ("--steps 1250", "--steps 2")
NEEDS_A_PHONE = ("bench devices",)
FAST = " --fixed --rounds 1"


def doc_commands() -> list[str]:
    """The `bench …` lines of the doc's fenced blocks, in order."""
    blocks = re.findall(r"^```bash\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("bench ")]


def no_phone_form(command: str) -> str:
    """The doc's own form of a phone command for a machine without one (written in its prose)."""
    forms = [span for span in re.findall(r"`([^`\n]+)`", DOC.read_text(encoding="utf-8"))
             if span.startswith(command + " --targets host-torch")]
    return forms[0] if forms else command


def write_flickr_like(root: Path, counts: dict[str, int]) -> None:
    """data/flickr30k/: Karpathy's dataset_flickr30k.json and flickr30k-images/*.jpg (landscape, like Flickr's photos,
    so crop and resize differ), captions and scenes from the synthetic set."""
    from PIL import Image

    from bench.data.base import open_dataset

    images = root / "data" / "flickr30k" / "flickr30k-images"
    images.mkdir(parents=True)
    entries = []
    for split, count in counts.items():
        for sample in open_dataset("synthetic", split="test" if split == "val" else split, limit=count, seed=1):
            scene = sample.load_image()
            photo = Image.new("RGB", (scene.width * 3 // 2, scene.height), (255, 255, 255))
            photo.paste(scene, (scene.width // 4, 0))
            name = f"{1000 + len(entries)}.jpg"
            photo.save(images / name, quality=95)
            entries.append({"filename": name, "imgid": len(entries), "split": split,
                            "sentences": [{"raw": c, "tokens": c.split()} for c in sample.captions]})
    (root / "data" / "flickr30k" / "dataset_flickr30k.json").write_text(
        json.dumps({"dataset": "flickr30k", "images": entries}), encoding="utf-8")


def save_tiny_blip_64(directory: Path) -> None:
    """tests/train_fixtures.py's tiny BLIP in Salesforce's layout, 64 wide (see the module docstring)."""
    from train_fixtures import TINY

    from bench.train.captioner import (BuiltinArchitecture, Preprocessing, new_builtin_model,
                                       write_builtin_tokenizer, write_preprocessor_config)

    tokenizer = write_builtin_tokenizer(directory)
    arch = BuiltinArchitecture(**{**TINY, "hidden_size": 64, "intermediate_size": 128})
    new_builtin_model(arch, tokenizer, seed=0).save_pretrained(directory)
    write_preprocessor_config(directory, Preprocessing(arch.image_size))


@pytest.fixture()
def seed_workspace(tmp_path, monkeypatch):
    save_tiny_blip_64(tmp_path / "models" / "blip-image-captioning-base")
    for name in ("seed-matrix.yaml", "seed-run.yaml"):
        (tmp_path / "models" / name).write_text((ROOT / "models" / name).read_text(encoding="utf-8"), encoding="utf-8")
    write_flickr_like(tmp_path, {"train": 8, "val": 3, "test": 2})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_ROOT", str(tmp_path))
    return tmp_path


def test_the_doc_walks_fine_tune_build_measure_report(seed_workspace, capsys):
    from bench.cli import app, main
    from bench.report.load import load_run

    commands = doc_commands()
    assert [c.split()[1] for c in commands] == ["data", "finetune", "eval", "eval", "models", "models", "devices",
                                                "run", "report", "report"]
    for command in commands:
        command = command.replace(*AFFORDABLE)
        if command.startswith("bench run "):
            command = no_phone_form(command) + FAST
            assert "host-torch" in command
        argv = shlex.split(command)[1:]
        if command in NEEDS_A_PHONE:
            import typer

            assert argv[0] in typer.main.get_command(app).commands  # exists; running it needs usbmuxd and a phone
            continue
        code = main(argv)
        assert code == 0, f"{command}: exit {code}: {capsys.readouterr().err}"

    # The build made every variant of the seed's setting from the fine-tuned checkpoint …
    run = load_run("latest", None)
    names = sorted(v["name"] for v in run.variants.values())
    assert len(names) == 17 and {"fp32", "int8", "prune-0.672", "conv-prune-0.4", "embedding-prune-0.2",
                                 "input-348-resize", "input-224-crop", "input-384-crop"} <= set(names)
    # … measured them, and scored each with its own preprocessing on the validation split.
    evals = list(run.evals.values())
    assert len(evals) == 17 and all(record["dataset"]["n"] == 3 for record in evals)
    decodings = {(r["decoding"]["image_size"], r["decoding"]["resize"]) for r in evals}
    assert {(348, "resize"), (348, "center_crop"), (224, "center_crop"), (384, "center_crop")} <= decodings
    assert (seed_workspace / "seed-report.html").is_file()
    finetuned = json.loads((seed_workspace / "models" / "blip-base-flickr30k" / "bench_captioner.json").read_text())
    assert finetuned["dataset"]["signature"].startswith("flickr30k") and finetuned["result"]["steps"] == 2
