"""Core ML models made directly with coremltools (no torch), as a user's own pipeline would: "bring your own model".

Every model is tiny (KBs, ~0.1 s each) and built once per test session (`byo_packages` in conftest):
    dense / pruned (60 %) / palettized (4-bit) / int8  a small conv net with a 10-way class-score output
    two_inputs                                         float32 and int32 inputs
    enumerated                                         input with enumerated shapes (default 8×8, also 16×16)
    stateful                                           an fp16 accumulator held in an MLState (iOS18)
    image_input                                        an 8×8 RGB image input (a pixel buffer on the device)
    neural_network                                     an old-style neural network in a single .mlmodel file
    multifunction                                      two functions (the conv net, the adder), default "dense"
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONV_FAMILY = ("dense", "pruned", "palettized", "int8")


def make_packages(folder: Path) -> dict[str, Path]:
    import logging
    import warnings

    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol, types
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig, OpMagnitudePrunerConfig, OpPalettizerConfig, OptimizationConfig,
        linear_quantize_weights, palettize_weights, prune_weights,
    )

    warnings.filterwarnings("ignore")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    conv_weight = (rng.standard_normal((16, 3, 3, 3)) * 0.2).astype(np.float32)
    linear_weight = (rng.standard_normal((10, 16 * 8 * 8)) * 0.05).astype(np.float32)
    paths: dict[str, Path] = {}

    def save(model, name: str) -> None:
        paths[name] = folder / f"{name}.mlpackage"
        model.save(str(paths[name]))

    def convert(program, target=ct.target.iOS17, **kwargs):
        return ct.convert(program, convert_to="mlprogram", minimum_deployment_target=target,
                          compute_precision=ct.precision.FLOAT32, **kwargs)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.iOS17)
    def conv_net(x):
        y = mb.relu(x=mb.conv(x=x, weight=conv_weight, pad_type="same"))
        return mb.linear(x=mb.reshape(x=y, shape=[1, 16 * 8 * 8]), weight=linear_weight, name="scores")

    dense = convert(conv_net)
    save(dense, "dense")
    save(prune_weights(dense, OptimizationConfig(global_config=OpMagnitudePrunerConfig(
        target_sparsity=0.6, weight_threshold=256))), "pruned")
    save(palettize_weights(dense, OptimizationConfig(global_config=OpPalettizerConfig(
        nbits=4, mode="uniform", weight_threshold=256))), "palettized")
    save(linear_quantize_weights(dense, OptimizationConfig(global_config=OpLinearQuantizerConfig(
        weight_threshold=256))), "int8")

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4)), mb.TensorSpec(shape=(1, 4), dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def two_inputs(a, b):
        return mb.add(x=a, y=mb.cast(x=b, dtype="fp32"), name="sum")

    save(convert(two_inputs), "two_inputs")

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, get_new_symbol(), get_new_symbol()))],
                opset_version=ct.target.iOS17)
    def pooled(x):
        return mb.reduce_mean(x=x, axes=[2, 3], name="pooled")

    save(convert(pooled, inputs=[ct.TensorType(name="x", shape=ct.EnumeratedShapes(
        shapes=[(1, 3, 8, 8), (1, 3, 16, 16)], default=(1, 3, 8, 8)))]), "enumerated")

    @mb.program(input_specs=[mb.StateTensorSpec((1, 4), dtype=types.fp16), mb.TensorSpec((1, 4), dtype=types.fp16)],
                opset_version=ct.target.iOS18)
    def accumulate(acc, x):
        total = mb.add(x=mb.read_state(input=acc), y=x)
        mb.coreml_update_state(state=acc, value=total)
        return mb.identity(x=total, name="total")

    save(ct.convert(accumulate, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18), "stateful")

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 8, 8))], opset_version=ct.target.iOS17)
    def colour(image):
        return mb.reduce_mean(x=image, axes=[2, 3], name="colour")

    save(convert(colour, inputs=[ct.ImageType(name="image", shape=(1, 3, 8, 8), color_layout=ct.colorlayout.RGB)]),
         "image_input")

    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    network = NeuralNetworkBuilder([("x", datatypes.Array(4))], [("y", datatypes.Array(2))])
    network.add_inner_product("fc", W=rng.standard_normal((2, 4)).astype(np.float32), b=np.zeros(2, np.float32),
                              input_channels=4, output_channels=2, has_bias=True, input_name="x", output_name="y")
    paths["neural_network"] = folder / "neural_network.mlmodel"
    ct.models.utils.save_spec(network.spec, str(paths["neural_network"]))

    descriptor = ct.utils.MultiFunctionDescriptor()
    descriptor.add_function(str(paths["dense"]), src_function_name="main", target_function_name="dense")
    descriptor.add_function(str(paths["two_inputs"]), src_function_name="main", target_function_name="adder")
    descriptor.default_function_name = "dense"
    paths["multifunction"] = folder / "multifunction.mlpackage"
    ct.utils.save_multifunction(descriptor, str(paths["multifunction"]))
    return paths


# ------------------------------------------------------------------------------------------ a stand-in for Core ML
DRIFT_SCENARIO = {"cpuOnly": 0.0, "cpuAndGPU": 0.001, "cpuAndNeuralEngine": 0.02, "all": 0.02}


class FakeCoreML:
    """The Core ML runtime's part on a Mac, which cannot exist on Linux (a test double, a SCENARIO the test sets).

    It reads each package's own output description (names, shapes, dtypes of the chosen function) and answers every
    prediction with `truth(input) + drift[unit] · ‖truth‖-scaled noise`: `truth` depends only on the input values and
    the output name, so every variant of a family computes "the same function", exactly on cpuOnly and with the
    scenario's relative drift elsewhere. The host is never told the scenario; it must measure it from the outputs."""

    def __init__(self, drift: dict[str, float] | None = None, *, output_scale: int = 1):
        self.drift = dict(DRIFT_SCENARIO if drift is None else drift)
        self.output_scale = output_scale  # >1 makes outputs that many times longer (over-the-cap scenario)
        self.compiled: list[str] = []

    def compile(self, package: Path) -> Path:
        self.compiled.append(str(package))
        return Path(package)

    def load(self, compiled: Path, compute_unit: str, function: str) -> "FakeModel":
        from coremltools.proto import Model_pb2

        spec = Model_pb2.Model()
        spec.ParseFromString((Path(compiled) / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
        described = {f.name: f for f in spec.description.functions}
        outputs = described[function].output if described else spec.description.output
        return FakeModel([(o.name, list(o.type.multiArrayType.shape), o.type.multiArrayType.dataType)
                          for o in outputs], self.drift[compute_unit], compute_unit, self.output_scale)

    def features(self, model, arrays: dict) -> dict:
        return arrays

    def thermal_state(self) -> str:
        return "nominal"

    def compute_plan(self, compiled: Path, compute_unit: str, function: str) -> list[dict]:
        device = {"cpuOnly": "cpu", "cpuAndGPU": "gpu"}.get(compute_unit, "neuralEngine")
        return [{"name": "op0", "type": "conv", "preferred": device, "supported": ["cpu", device], "cost": 1.0}]


class FakeModel:
    def __init__(self, outputs, drift: float, unit: str, scale: int):
        self.outputs, self.drift, self.unit, self.scale = outputs, drift, unit, scale

    def make_state(self) -> object:
        return object()

    def predict(self, features: dict, state=None) -> dict:
        import hashlib

        import numpy as np

        key = hashlib.sha256(b"".join(np.ascontiguousarray(features[n]).tobytes() for n in sorted(features))).digest()
        produced = {}
        for name, shape, data_type in self.outputs:
            shape = [max(int(d), 1) for d in shape]
            shape[-1] *= self.scale
            truth_rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key + name.encode()).digest()[:8], "little"))
            truth = truth_rng.standard_normal(shape)
            noise_rng = np.random.default_rng(int.from_bytes(
                hashlib.sha256(key + name.encode() + self.unit.encode()).digest()[:8], "little"))
            noise = noise_rng.standard_normal(shape)
            value = truth + self.drift * noise * np.linalg.norm(truth) / max(np.linalg.norm(noise), 1e-12)
            produced[name] = value.astype(np.float16 if data_type == 65552 else np.float32)
        return produced


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace as BENCH_ROOT and working directory (wide console: one-line messages stay whole)."""
    from bench.paths import Workspace

    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.setenv("BENCH_ROOT", str(root))
    monkeypatch.chdir(root)
    monkeypatch.setenv("COLUMNS", "250")
    return Workspace(root)
