"""The iPhone runner's Swift sources, checked without a Swift toolchain (none exists on Linux).

What this proves: every .swift file parses with tree-sitter-swift (no ERROR/MISSING node); the Codable wire
structs use exactly the JSON keys of bench/deploy/schemas/*.json (required keys always encoded, nullable keys
via @Nullable, optional job keys decoded as optionals); the names the runner hard-codes (compute units,
thermal/battery states, default feature names, container file names) equal the host's; project.yml and
build.sh are what the README promises. What it cannot prove: that the code type-checks and links against the
iOS SDK, or that Core ML behaves as assumed — that needs a Mac (runner/build.sh) and an iPhone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

tree_sitter = pytest.importorskip("tree_sitter")
tree_sitter_swift = pytest.importorskip("tree_sitter_swift")

from bench.deploy import contract  # noqa: E402

RUNNER = Path(__file__).resolve().parents[1] / "runner"
SOURCES = RUNNER / "BenchRunner"
SWIFT_FILES = sorted(SOURCES.glob("*.swift"))

# Swift wire struct -> path of its JSON Schema object ("#" = root, then keys inside the schema document).
RESULT_STRUCTS = {
    "ResultFile": (),
    "DeviceConditions": ("$defs", "device"),
    "CompileRecord": ("$defs", "compile"),
    "LoadPair": ("$defs", "load_pair"),
    "StepRecord": ("$defs", "step"),
    "Sample": ("$defs", "sample"),
    "ComputePlanRecord": ("$defs", "compute_plan"),
    "OpRecord": ("$defs", "op"),
    "AppStateChange": ("$defs", "app_state"),
}
JOB_STRUCTS = {
    "JobHeader": (),
    "Job": (),
    "JobModel": ("$defs", "model"),
    "DecodeSettings": ("$defs", "model", "properties", "decode"),
    "FeatureNames": ("$defs", "model", "properties", "io"),
    "JobInput": ("$defs", "model", "properties", "inputs", "items"),
    "CompiledPaths": ("$defs", "model", "properties", "compiled"),
    "JobStep": ("$defs", "step"),
}
# Job keys the runner deliberately does not read.
JOB_KEYS_IGNORED_BY_RUNNER = {"created_at"}
# Structs that read only part of their object on purpose (the full read is another struct).
PARTIAL_READERS = {"JobHeader"}


@dataclass
class SwiftProperty:
    name: str
    optional: bool
    nullable_wrapper: bool
    is_let: bool = False
    has_value: bool = False

    def memberwise(self) -> str | None:
        """How Swift's synthesized memberwise init takes this property: "required", "defaulted" or None (absent)."""
        if self.is_let and self.has_value:
            return None
        if self.has_value or (self.optional and not self.is_let and not self.nullable_wrapper):
            return "defaulted"
        return "required"


@dataclass
class SwiftStruct:
    name: str
    file: str
    inherits: set[str]
    properties: dict[str, SwiftProperty] = field(default_factory=dict)
    coding_keys: dict[str, str] | None = None
    has_init: bool = False

    def json_keys(self) -> dict[str, SwiftProperty]:
        if self.coding_keys is None:
            return dict(self.properties)
        return {self.coding_keys[name]: prop for name, prop in self.properties.items() if name in self.coding_keys}


@lru_cache(maxsize=1)
def parser():
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))


def parse(source: bytes):
    return parser().parse(source)


def problems(tree) -> list[str]:
    found = []

    def walk(node):
        if node.type == "ERROR" or node.is_missing:
            kind = "missing" if node.is_missing else "syntax error"
            found.append(f"line {node.start_point[0] + 1}: {kind} near {node.text[:50]!r}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return found


def text(node) -> str:
    return node.text.decode("utf-8")


def strip_backticks(name: str) -> str:
    return name.strip("`")


def declaration_keyword(node) -> str:
    return node.children[0].type  # "struct" | "class" | "enum" | "extension" | "actor"


def parse_property(node) -> SwiftProperty | None:
    """A stored instance property, or None for static/computed ones (those are never encoded)."""
    modifiers = [child for child in node.children if child.type == "modifiers"]
    modifier_text = " ".join(text(m) for m in modifiers)
    if re.search(r"\bstatic\b|\bclass\b|\blazy\b", modifier_text) or node.child_by_field_name("computed_value"):
        return None
    pattern = node.child_by_field_name("name")
    if pattern is None:
        return None
    annotation = next((child for child in node.children if child.type == "type_annotation"), None)
    optional = annotation is not None and annotation.child_by_field_name("name").type == "optional_type"
    binding = next((child for child in node.children if child.type == "value_binding_pattern"), None)
    return SwiftProperty(
        name=strip_backticks(text(pattern)), optional=optional, nullable_wrapper="@Nullable" in modifier_text,
        is_let=binding is not None and text(binding).startswith("let"),
        has_value=node.child_by_field_name("value") is not None)


def parse_coding_keys(node) -> dict[str, str]:
    keys: dict[str, str] = {}
    body = node.child_by_field_name("body")
    for entry in (child for child in body.children if child.type == "enum_entry"):
        last = None
        for child in entry.children:
            if child.type == "simple_identifier":
                last = strip_backticks(text(child))
                keys[last] = last
            elif child.type == "line_string_literal" and last is not None:
                keys[last] = text(child).strip('"')
    return keys


@lru_cache(maxsize=1)
def swift_structs() -> dict[str, SwiftStruct]:
    structs: dict[str, SwiftStruct] = {}

    def visit(node, file: str):
        if node.type == "class_declaration" and declaration_keyword(node) == "struct":
            name = text(node.child_by_field_name("name"))
            inherits = {text(child).split(".")[-1] for child in node.children if child.type == "inheritance_specifier"}
            struct = SwiftStruct(name=name, file=file, inherits=inherits)
            for member in node.child_by_field_name("body").children:
                if member.type == "property_declaration":
                    prop = parse_property(member)
                    if prop is not None:
                        struct.properties[prop.name] = prop
                elif member.type == "class_declaration" and text(member.child_by_field_name("name")) == "CodingKeys":
                    struct.coding_keys = parse_coding_keys(member)
                elif member.type == "init_declaration":
                    struct.has_init = True
            structs[name] = struct
        for child in node.children:
            if child.type != "function_declaration":
                visit(child, file)

    for path in SWIFT_FILES:
        visit(parse(path.read_bytes()).root_node, path.name)
    return structs


def schema_object(kind: str, path: tuple[str, ...]) -> dict:
    node = contract.schema(kind)
    for key in path:
        node = node[key]
    return node


def resolve(kind: str, node: dict) -> dict:
    while "$ref" in node:
        node = schema_object(kind, tuple(node["$ref"].removeprefix("#/").split("/")))
    return node


def allows_null(kind: str, node: dict) -> bool:
    node = resolve(kind, node)
    types = node.get("type")
    if types == "null" or (isinstance(types, list) and "null" in types):
        return True
    return any(allows_null(kind, option) for option in node.get("anyOf", []) + node.get("oneOf", []))


def string_literals_in_function(function_name: str) -> set[str]:
    """Every string literal inside the Swift function (or initializer body) of that name."""
    found: set[str] = set()

    def collect(node):
        if node.type == "line_str_text":
            found.add(text(node))
        for child in node.children:
            collect(child)

    def visit(node):
        name = node.child_by_field_name("name") if node.type == "function_declaration" else None
        if name is not None and text(name) == function_name:
            collect(node)
        for child in node.children:
            visit(child)

    for path in SWIFT_FILES:
        visit(parse(path.read_bytes()).root_node)
    return found


def initializer_literals(struct_name: str) -> set[str]:
    found: set[str] = set()

    def collect(node):
        if node.type == "line_str_text":
            found.add(text(node))
        for child in node.children:
            collect(child)

    def visit(node, inside: bool):
        if node.type == "class_declaration":
            inside = text(node.child_by_field_name("name")) == struct_name
        if inside and node.type == "init_declaration":
            collect(node)
        for child in node.children:
            visit(child, inside)

    for path in SWIFT_FILES:
        visit(parse(path.read_bytes()).root_node, False)
    return found


def static_string_constants(enum_name: str) -> dict[str, str | int]:
    values: dict[str, str | int] = {}

    def visit(node):
        if node.type == "class_declaration" and text(node.child_by_field_name("name")) == enum_name:
            for member in node.child_by_field_name("body").children:
                if member.type != "property_declaration":
                    continue
                name = text(member.child_by_field_name("name"))
                value = member.child_by_field_name("value")
                if value is not None and value.type == "line_string_literal":
                    values[name] = text(value).strip('"')
                elif value is not None and value.type == "integer_literal":
                    values[name] = int(text(value))
        for child in node.children:
            visit(child)

    for path in SWIFT_FILES:
        visit(parse(path.read_bytes()).root_node)
    return values


# ----------------------------------------------------------------------------------------------- parsing


def test_the_runner_has_its_sources():
    names = {path.name for path in SWIFT_FILES}
    assert {"BenchRunnerApp.swift", "Contract.swift", "JobRunner.swift", "Captioner.swift"} <= names


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda path: path.name)
def test_swift_file_parses_without_errors(path):
    assert problems(parse(path.read_bytes())) == [], f"{path.name} does not parse"


def test_the_parser_does_flag_broken_swift():
    """Guard against a parser that accepts anything: a broken declaration must produce an ERROR/MISSING node."""
    assert problems(parse(b"struct Broken { let x: }\nfunc f( {"))


# ----------------------------------------------------------------------------------------------- wire keys


@pytest.mark.parametrize("struct_name", sorted(RESULT_STRUCTS))
def test_result_structs_encode_exactly_the_schema_keys(struct_name):
    struct = swift_structs()[struct_name]
    schema = schema_object("result", RESULT_STRUCTS[struct_name])
    keys = struct.json_keys()
    assert "Encodable" in struct.inherits or "Codable" in struct.inherits
    assert set(keys) == set(schema["properties"]), f"{struct_name} vs result schema {RESULT_STRUCTS[struct_name]}"
    for key in schema["required"]:
        prop = keys[key]
        # A plain optional is left out of the JSON when nil; a required key must always be written.
        assert not prop.optional or prop.nullable_wrapper, f"{struct_name}.{key} is required: use @Nullable"
    for key, prop in keys.items():
        nullable = allows_null("result", schema["properties"][key])
        assert prop.optional == nullable, f"{struct_name}.{key}: Swift optional={prop.optional}, schema null={nullable}"


@pytest.mark.parametrize("struct_name", sorted(JOB_STRUCTS))
def test_job_structs_decode_only_schema_keys(struct_name):
    struct = swift_structs()[struct_name]
    schema = schema_object("job", JOB_STRUCTS[struct_name])
    keys = struct.json_keys()
    required = set(schema.get("required", []))
    assert "Decodable" in struct.inherits or "Codable" in struct.inherits
    assert set(keys) <= set(schema["properties"]), f"{struct_name} reads keys the job schema does not have"
    for key, prop in keys.items():
        if not prop.optional:
            assert key in required, f"{struct_name}.{key} is non-optional in Swift but optional in the job schema"
    if struct_name not in PARTIAL_READERS:
        assert required - set(keys) <= JOB_KEYS_IGNORED_BY_RUNNER, f"{struct_name} ignores required job keys"


def test_key_comparison_can_fail():
    """The struct/schema comparison sees a renamed key (so the tests above are not vacuous)."""
    source = SOURCES.joinpath("Contract.swift").read_text().replace("var total_ns: UInt64", "var totalNs: UInt64")
    tree = parse(source.encode())
    sample = None

    def visit(node):
        nonlocal sample
        if (node.type == "class_declaration" and declaration_keyword(node) == "struct"
                and text(node.child_by_field_name("name")) == "Sample"):
            sample = {p.name for m in node.child_by_field_name("body").children
                      if m.type == "property_declaration" and (p := parse_property(m))}
        for child in node.children:
            visit(child)

    visit(tree.root_node)
    assert sample is not None and "totalNs" in sample and "total_ns" not in sample
    assert sample != set(schema_object("result", ("$defs", "sample"))["properties"])


def test_golden_result_keys_are_exactly_what_swift_writes():
    """Walk the golden result: every object's keys equal the Swift struct that writes it."""
    result = json.loads((Path(__file__).parent / "golden" / "result.v1.json").read_text())
    structs = swift_structs()

    def keys(name):
        return set(structs[name].json_keys())

    assert set(result) == keys("ResultFile")
    assert set(result["device"]) == keys("DeviceConditions")
    for item in result["compiles"]:
        assert set(item) == keys("CompileRecord")
    for step in result["steps"]:
        assert set(step) == keys("StepRecord")
        assert set(step["cold_load_ns"]) == set(step["warm_load_ns"]) == keys("LoadPair")
        for sample in step["warmup"] + step["samples"]:
            assert set(sample) == keys("Sample")
        if step["compute_plan"]:
            assert set(step["compute_plan"]) == keys("ComputePlanRecord")
            for op in step["compute_plan"]["encoder"] + step["compute_plan"]["decoder"]:
                assert set(op) == keys("OpRecord")
    for change in result["app_states"]:
        assert set(change) == keys("AppStateChange")


def memberwise_calls() -> list[tuple[str, int, str, list[str | None]]]:
    """(file, line, struct name, argument labels) of every call `StructName(...)` to a struct without its own init."""
    structs = {name: s for name, s in swift_structs().items() if not s.has_init}
    calls = []

    def visit(node, file):
        if node.type == "call_expression" and node.children[0].type == "simple_identifier":
            callee = text(node.children[0])
            suffix = next((c for c in node.children if c.type == "call_suffix"), None)
            arguments = next((c for c in suffix.children if c.type == "value_arguments"), None) if suffix else None
            if callee in structs and arguments is not None:
                labels = []
                for argument in (c for c in arguments.children if c.type == "value_argument"):
                    label = argument.child_by_field_name("name")
                    labels.append(strip_backticks(text(label)) if label is not None else None)
                calls.append((file, node.start_point[0] + 1, callee, labels))
        for child in node.children:
            visit(child, file)

    for path in SWIFT_FILES:
        visit(parse(path.read_bytes()).root_node, path.name)
    return calls


def memberwise_problem(struct: SwiftStruct, labels: list[str | None]) -> str | None:
    """Why a call would not match Swift's synthesized memberwise initializer (labels in declaration order)."""
    parameters = [(name, prop.memberwise()) for name, prop in struct.properties.items() if prop.memberwise()]
    order = [name for name, _ in parameters]
    if None in labels:
        return "unlabelled argument"
    unknown = [label for label in labels if label not in order]
    if unknown:
        return f"no memberwise parameter {unknown}"
    positions = [order.index(label) for label in labels]
    if positions != sorted(positions) or len(set(positions)) != len(positions):
        return f"labels {labels} out of declaration order {order}"
    missing = [name for name, kind in parameters if kind == "required" and name not in labels]
    return f"missing required {missing}" if missing else None


def test_memberwise_initializer_calls_match_the_structs():
    """A Swift compile error we can catch without a compiler: memberwise-init labels must follow declaration order."""
    calls = memberwise_calls()
    assert {name for _, _, name, _ in calls} >= {"ResultFile", "DeviceConditions", "Sample", "OpRecord", "StepRecord"}
    structs = swift_structs()
    problems_found = [f"{file}:{line}: {name}: {problem}" for file, line, name, labels in calls
                      if (problem := memberwise_problem(structs[name], labels))]
    assert problems_found == []


def test_memberwise_check_can_fail():
    sample = swift_structs()["Sample"]
    good = ["image_id", "repeat", "encoder_ns", "decoder_ns", "total_ns", "thermal_state", "t_ns", "tokens"]
    assert memberwise_problem(sample, good) is None
    assert "out of declaration order" in memberwise_problem(sample, [good[1], good[0], *good[2:]])
    assert "missing required ['tokens']" in memberwise_problem(sample, good[:-1])
    step = swift_structs()["StepRecord"]
    assert memberwise_problem(step, ["variant_id", "compute_unit"]) is None  # the rest have defaults


# ----------------------------------------------------------------------------------------------- names


def test_compute_units_match_the_host():
    assert string_literals_in_function("computeUnits") == set(contract.COMPUTE_UNITS)


def test_thermal_and_battery_states_match_the_schema():
    assert string_literals_in_function("thermalState") == set(contract.THERMAL_STATES)
    assert string_literals_in_function("batteryState") == set(contract.BATTERY_STATES)


def test_compute_device_names_match_the_schema():
    expected = set(contract.schema("result")["$defs"]["compute_device"]["enum"])
    assert string_literals_in_function("deviceName") == expected


def test_default_feature_names_match_the_host():
    assert initializer_literals("ResolvedFeatureNames") == set(contract.DEFAULT_IO.values())
    source = SOURCES.joinpath("Contract.swift").read_text()
    for key, default in contract.DEFAULT_IO.items():
        assert re.search(rf"names\?\.{key} \?\? \"{default}\"", source), f"default of {key} differs"


def test_container_names_and_versions_match_the_host():
    names = static_string_constants("ContractNames")
    assert names == {
        "containerFolder": contract.CONTAINER_ROOT.split("/")[-1],
        "jobsFolder": contract.JOBS_DIR,
        "resultsFolder": contract.RESULTS_DIR,
        "jobFile": contract.JOB_FILE,
        "partialResultFile": contract.PARTIAL_RESULT_FILE,
        "resultFile": contract.RESULT_FILE,
        "doneFile": contract.DONE_FILE,
        "jobSchema": contract.JOB_KIND,
        "resultSchema": contract.RESULT_KIND,
        "jobSchemaVersion": contract.JOB_VERSION,
        "resultSchemaVersion": contract.RESULT_VERSION,
    }
    assert contract.CONTAINER_ROOT.split("/")[0] == "Documents"  # the runner resolves .documentDirectory


def test_result_statuses_written_by_the_runner_are_known():
    source = SOURCES.joinpath("JobRunner.swift").read_text()
    written = set(re.findall(r'status(?:\s*=|:)\s*"(\w+)"', source))
    assert written and written <= set(contract.RESULT_STATUSES)


def test_runner_uses_the_apis_the_contract_relies_on():
    """Cheap guard that the measured quantities come from the intended APIs (semantics need a device)."""
    source = "\n".join(path.read_text() for path in SWIFT_FILES)
    for needle in ("MLModel.compileModel(at:", "MLModel.load(contentsOf:", "clock_gettime_nsec_np(CLOCK_UPTIME_RAW)",
                   "ProcessInfo.processInfo.thermalState", "isBatteryMonitoringEnabled = true",
                   "isLowPowerModeEnabled", "isIdleTimerDisabled = true", "#available(iOS 17.4, *)",
                   "MLComputePlan.load(contentsOf:", "deviceUsage(for:", "estimatedCost(of:",
                   'Logger(subsystem: "bench.runner"', '"--job"', '"BENCH_JOB"', '"BENCH_JOB_ID"', "rename(",
                   "UIApplication.shared.applicationState", "UIApplication.didEnterBackgroundNotification",
                   "UIApplication.willResignActiveNotification", "UIApplication.didBecomeActiveNotification",
                   "beginBackgroundTask(withName:", "makeState()", "prediction(from: decoderInput, using: state)"):
        assert needle in source, needle


# ----------------------------------------------------------------------------------------------- project


def test_project_yml_has_the_promised_settings():
    spec = yaml.safe_load(RUNNER.joinpath("project.yml").read_text())
    assert spec["name"] == "BenchRunner"
    assert spec["options"]["deploymentTarget"]["iOS"] == "16.0"
    target = spec["targets"]["BenchRunner"]
    assert target["type"] == "application" and target["platform"] == "iOS"
    assert target["deploymentTarget"] == "16.0"
    assert [source["path"] for source in target["sources"]] == ["BenchRunner"]
    info = target["info"]["properties"]
    assert info["UIFileSharingEnabled"] is True and info["LSSupportsOpeningDocumentsInPlace"] is True
    settings = target["settings"]["base"]
    assert settings["PRODUCT_BUNDLE_IDENTIFIER"] == "org.bench.runner"
    assert settings["CODE_SIGN_STYLE"] == "Automatic" and settings["CODE_SIGN_IDENTITY"] == "Apple Development"
    assert settings["CODE_SIGN_INJECT_BASE_ENTITLEMENTS"] == "YES"  # keeps get-task-allow
    assert target["settings"]["configs"]["Release"]["SWIFT_OPTIMIZATION_LEVEL"] == "-O"
    assert spec["schemes"]["BenchRunner"]["run"]["config"] == "Release"


def test_build_script_is_valid_bash_and_refuses_linux_clearly():
    script = RUNNER / "build.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text_ = script.read_text()
    for needle in ("xcodegen generate", "-scheme BenchRunner", "-configuration", "-sdk iphoneos",
                   "-allowProvisioningUpdates", "DEVELOPMENT_TEAM=", "BenchRunner.ipa", "get-task-allow"):
        assert needle in text_, needle
    if shutil.which("uname") and subprocess.run(["uname", "-s"], capture_output=True, text=True).stdout.strip() != "Darwin":
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
        assert done.returncode != 0
        assert "needs macOS" in done.stderr and done.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------- robustness (issue 10)
# Structural checks of the runner's error and threading paths, by tree-sitter query: each names the fault it guards
# against. They prove the code has the shape; that Core ML and iOS then behave as documented needs a device.


def functions_named(name: str, file: str | None = None) -> list:
    found = []

    def visit(node):
        if node.type == "function_declaration" and text(node.child_by_field_name("name")) == name:
            found.append(node)
        for child in node.children:
            visit(child)

    for path in SWIFT_FILES:
        if file is None or path.name == file:
            visit(parse(path.read_bytes()).root_node)
    return found


def the_function(name: str, file: str | None = None):
    found = functions_named(name, file)
    assert len(found) == 1, f"expected one function {name}, found {len(found)}"
    return found[0]


def descendants(node, node_type: str) -> list:
    found = []

    def visit(current):
        if current.type == node_type:
            found.append(current)
        for child in current.children:
            visit(child)

    visit(node)
    return found


def callee_name(call) -> str:
    """The called name of a call_expression: `f(...)` -> f, `a.b.f(...)` -> f, `x[...]` -> x."""
    head = call.children[0]
    if head.type == "navigation_expression":
        return text(head.children[-1]).lstrip(".").strip()
    return text(head)


def calls_to(node, name: str) -> list:
    return [call for call in descendants(node, "call_expression") if callee_name(call) == name]


def ancestors(node) -> list:
    found = []
    while node.parent is not None:
        node = node.parent
        found.append(node)
    return found


def all_sources():
    return [(path.name, parse(path.read_bytes()).root_node) for path in SWIFT_FILES]


# -- stride-aware MLMultiArray access ------------------------------------------------------------------------------


def test_multiarray_writes_in_the_decoder_loop_use_keyed_subscripts():
    """`ids[3] = …` is a linear index, which ignores strides on non-contiguous storage; `ids[[0, 3]] = …` does not."""
    caption = the_function("caption", "Captioner.swift")
    multiarrays = {"ids", "created", "mask"}  # every MLMultiArray the loop writes (features is a dictionary)
    targets = [node for node in descendants(caption, "directly_assignable_expression")
               if node.children[0].type == "call_expression" and text(node.children[0].children[0]) in multiarrays]
    assert {text(t.children[0].children[0]) for t in targets} == multiarrays
    for target in targets:
        arguments = next(c for c in target.children[0].children[-1].children if c.type == "value_arguments")
        (argument,) = [c for c in arguments.children if c.type == "value_argument"]
        assert text(argument).startswith("Self.position("), f"linear subscript {text(target)!r}"
    position = the_function("position", "Captioner.swift")
    assert "[0, NSNumber(value: index)]" in text(position)


def test_pixel_inputs_are_copied_through_the_destination_strides():
    load = the_function("load", "Captioner.swift")
    (call,) = calls_to(load, "withUnsafeMutableBufferPointer")
    (closure,) = descendants(call, "lambda_literal")
    parameters = [text(p) for p in descendants(closure, "lambda_parameter")]
    assert len(parameters) == 2 and parameters[1] != "_", "the closure must take the strides it is given"
    body = text(closure)
    assert f"strides == dense" in body and "Strided.offset(index, strides: strides)" in body


def test_argmax_addresses_logits_through_their_strides_and_checks_the_storage():
    argmax = [f for f in functions_named("argmax", "Captioner.swift")]
    assert len(argmax) == 2
    public, scalar = sorted(argmax, key=lambda f: "withUnsafeBufferPointer" in text(f))
    assert "logits.strides" in text(public) and "Strided.offset(index, strides: strides)" in text(public)
    assert "last < buffer.count" in text(scalar) and "base + index * stride" in text(scalar)


def test_strided_offset_matches_numpy_for_a_padded_array():
    """Strided.offset / contiguous, transcribed line by line, against numpy's own strides of a padded view."""
    import numpy as np

    source = text(the_function("offset", "Captioner.swift"))
    assert "pair.0 * pair.1" in source  # the transcription below is of this body
    padded = np.zeros((1, 7, 40), dtype=np.float32)[:, :, :33]  # rows padded to 40 elements
    strides = [s // padded.itemsize for s in padded.strides]
    assert strides == [280, 40, 1]
    flat = padded.base.reshape(-1) if padded.base is not None else padded.reshape(-1)
    padded[0, 5, 17] = 3.0
    offset = sum(i * s for i, s in zip((0, 5, 17), strides))
    assert flat[offset] == 3.0 and offset != 5 * 33 + 17  # the linear index would have read the wrong element


# -- a failed result plus DONE on every path ---------------------------------------------------------------------


def test_finish_writes_done_even_when_the_result_cannot_be_written():
    finish = the_function("finish", "JobRunner.swift")
    body = finish.child_by_field_name("body") or next(c for c in finish.children if c.type == "function_body")
    top = next(c for c in body.children if c.type == "statements")
    blocks = [c for c in top.children if c.type == "do_statement"]
    assert len(blocks) == 2, "result.json and DONE are written in separate do/catch blocks"
    writes_result, writes_done = blocks
    assert "ContractNames.doneFile" not in text(writes_result)
    assert "ContractNames.doneFile" in text(writes_done)
    (fallback,) = [c for c in writes_result.children if c.type == "catch_block"]
    assert calls_to(fallback, "failedResult") and calls_to(fallback, "write"), "no failed result written on error"
    failed = text(the_function("failedResult", "JobRunner.swift"))
    assert 'status = "failed"' in failed and "steps = []" in failed and "compiles = []" in failed


def test_every_job_error_ends_in_finish():
    (run,) = [f for f in functions_named("run", "JobRunner.swift") if "finish()" in text(f)]
    top = next(c for c in next(c for c in run.children if c.type == "function_body").children if c.type == "statements")
    assert [callee_name(c) for c in top.children if c.type == "call_expression"][-2:] == ["finish",
                                                                                            "removeCompiledModels"]
    (block,) = [c for c in top.children if c.type == "do_statement"]
    (catch,) = [c for c in block.children if c.type == "catch_block"]
    assert 'result.status = "failed"' in text(catch) and "result.error" in text(catch)
    assert text(catch).startswith("catch {"), "the job's catch takes every error"


# -- strings cut and numbers clamped to the schema ----------------------------------------------------------------

# Every bounded field of the result schema -> the Swift limit that fits it (and the struct whose fittedToSchema
# assigns it). A bound added to the schema without a line here fails test_every_schema_bound_is_fitted.
SCHEMA_BOUNDS = {
    (("$defs", "nullable_message"), "maxLength"): "message",
    (("properties", "runner_version"), "maxLength"): "shortText",
    (("properties", "started_at"), "maxLength"): "shortText",
    (("properties", "finished_at"), "maxLength"): "shortText",
    (("$defs", "device", "properties", "model_identifier"), "maxLength"): "shortText",
    (("$defs", "device", "properties", "os_version"), "maxLength"): "shortText",
    (("$defs", "device", "properties", "os_build"), "maxLength"): "shortText",
    (("$defs", "sample", "properties", "image_id"), "maxLength"): "imageId",
    (("$defs", "op", "properties", "name"), "maxLength"): "opName",
    (("$defs", "op", "properties", "type"), "maxLength"): "opType",
    (("$defs", "op", "properties", "supported"), "maxItems"): "supportedDevices",
    (("$defs", "sample", "properties", "decoder_ns"), "maxItems"): "perSampleItems",
    (("$defs", "sample", "properties", "tokens"), "maxItems"): "perSampleItems",
    (("$defs", "sample", "properties", "tokens", "items"), "maximum"): "tokenMax",
}
# Bounds that need no fitting: job ids and variant ids are copied from the validated job, nanoseconds are UInt64
# (the schema's range exactly), fractions are clamped by Fit.unit (checked below).
UNFITTED_BOUNDS = {"job_id", "variant_id", "ns", "battery_level", "cost"}
FITTED_FIELDS = {  # struct -> fields its fittedToSchema must assign
    "ResultFile": {"error", "runner_version", "started_at", "finished_at", "device.model_identifier",
                   "device.os_version", "device.os_build", "device.battery_level", "compiles", "steps"},
    "StepRecord": {"error", "compute_plan_error", "warmup", "samples", "compute_plan"},
    "Sample": {"image_id", "repeat", "decoder_ns", "tokens"},
    "OpRecord": {"name", "type", "supported", "cost"},
}


def schema_bounds() -> set[tuple[tuple[str, ...], str]]:
    found = set()

    def walk(node, path):
        if isinstance(node, dict):
            for key in ("maxLength", "maxItems", "maximum"):
                if key in node:
                    found.add((path, key))
            for key, value in node.items():
                walk(value, path + (key,))
        elif isinstance(node, list):
            for value in node:
                walk(value, path)

    walk(contract.schema("result"), ())
    return found


def test_every_schema_bound_is_fitted():
    unfitted = {(path, key) for path, key in schema_bounds() if UNFITTED_BOUNDS & set(path)}
    assert schema_bounds() - unfitted == set(SCHEMA_BOUNDS)


def test_swift_limits_equal_the_schema():
    limits = static_string_constants("SchemaLimits")
    for (path, key), name in SCHEMA_BOUNDS.items():
        assert limits[name] == schema_object("result", path)[key], f"SchemaLimits.{name} vs {path} {key}"
    for path in (("$defs", "op", "properties", "cost"), ("$defs", "device", "properties", "battery_level")):
        assert {"type": "number", "minimum": 0, "maximum": 1} in schema_object("result", path)["anyOf"]
    assert "min(max(value, 0), 1)" in text(the_function("unit", "Contract.swift"))
    assert "isNaN" in text(the_function("unit", "Contract.swift"))


def extension_functions(type_name: str, function: str):
    for _, root in all_sources():
        for node in descendants(root, "class_declaration"):
            if declaration_keyword(node) == "extension" and text(node.children[1]) == type_name:
                return [f for f in descendants(node, "function_declaration")
                        if text(f.child_by_field_name("name")) == function]
    return []


@pytest.mark.parametrize("struct_name", sorted(FITTED_FIELDS))
def test_fitted_to_schema_assigns_every_bounded_field(struct_name):
    (function,) = extension_functions(struct_name, "fittedToSchema")
    assigned = set()
    for assignment in descendants(function, "assignment"):
        target = text(assignment.children[0])
        assigned.add(target.split(".", 1)[1] if target.startswith(("fitted.", "record.")) else target)
    assert FITTED_FIELDS[struct_name] <= assigned


def test_results_are_fitted_before_encoding():
    encoded = text(the_function("encoded", "JobRunner.swift"))
    assert ".fittedToSchema()" in encoded and "encoder.encode(" in encoded


def test_fit_text_counts_unicode_scalars_like_json_schema():
    """Fit.text cuts by Unicode scalars (JSON Schema's maxLength counts code points, Swift's count graphemes)."""
    body = text(the_function("text", "Contract.swift"))
    assert "unicodeScalars" in body and "prefix(limit - 1)" in body and '"…"' in body
    # The host agrees: a message of exactly 4096 code points passes, one more fails.
    from bench.errors import ContractError

    golden = json.loads((Path(__file__).parent / "golden" / "result.v1.json").read_text())
    job = json.loads((Path(__file__).parent / "golden" / "job.v1.json").read_text())
    cut = "é" * 4095 + "…"  # 4096 scalars, what Fit.text makes of a longer message
    failed = {**golden, "status": "failed", "error": cut, "compiles": [], "steps": []}
    contract.validate_result(json.dumps(failed), job=job)
    with pytest.raises(ContractError, match="error"):
        contract.validate_result(json.dumps({**failed, "error": cut + "x"}), job=job)


# -- predictions off the cooperative pool --------------------------------------------------------------------------


def test_predictions_run_only_inside_caption():
    users = [(file, f) for file, root in all_sources() for f in descendants(root, "function_declaration")
             if calls_to(f, "prediction")]
    assert [(file, text(f.child_by_field_name("name"))) for file, f in users] == [
        ("Captioner.swift", "caption"), ("Captioner.swift", "cachedCaption"), ("GenericJobRunner.swift", "predict")]
    callers = [text(f.child_by_field_name("name")) for _, root in all_sources()
               for f in descendants(root, "function_declaration") if calls_to(f, "caption")]
    assert callers == ["sample"]
    callers = [text(f.child_by_field_name("name")) for _, root in all_sources()
               for f in descendants(root, "function_declaration") if calls_to(f, "predict")]
    assert callers == ["foregroundPrediction"]
    cached_callers = [text(f.child_by_field_name("name")) for _, root in all_sources()
                      for f in descendants(root, "function_declaration") if calls_to(f, "cachedCaption")]
    assert cached_callers == ["caption"]


def test_cached_decoding_makes_one_state_per_caption_and_feeds_one_token_per_step():
    """kv_cache (issue 14): makeState inside the caption (never shared between captions), every decoder call
    through that state, one-token inputs written by key (stride-safe), encoder cross keys/values fed by name."""
    cached = the_function("cachedCaption", "Captioner.swift")
    body = text(cached)
    assert "@available(iOS 18.0, *)" in text(cached.parent) or "@available(iOS 18.0, *)" in body
    assert len(calls_to(cached, "makeState")) == 1
    (decoder_call,) = [c for c in calls_to(cached, "prediction") if "using: state" in text(c)]
    assert "decoder.prediction(from: decoderInput, using: state)" in text(decoder_call)
    assert body.index("makeState") < body.index("while true")  # one state for all steps of this caption
    assert "token[Self.position(0)]" in body and "position[[0] as [NSNumber]]" in body
    assert "names.crossKeys, names.crossValues" in body and "Self.argmax(logits, position: 0)" in body
    assert "stateNs: stateNs" in body
    inits = descendants(parse(SOURCES.joinpath("Captioner.swift").read_bytes()).root_node, "init_declaration")
    init = next(text(f) for f in inits if "decoder: MLModel" in text(f))
    assert 'model.decoding == "kv_cache"' in init and "MeasureError.needsIOS18" in init


def test_samples_are_measured_on_the_measurement_thread():
    run_step = [f for f in functions_named("run", "JobRunner.swift") if "StepRecord" in text(f)]
    assert len(run_step) == 1
    assert len(calls_to(run_step[0], "foregroundSample")) == 2  # warm-up and samples, each through the bracket
    bracket = the_function("foregroundSample", "JobRunner.swift")
    calls = calls_to(bracket, "sample")
    assert len(calls) == 1
    for call in calls:
        closure = next(a for a in ancestors(call) if a.type == "lambda_literal")
        runner = closure.parent.parent
        assert runner.type == "call_expression" and text(runner.children[0]) == "measuring.run", text(call)
    assert "MeasurementThread.shared" in text(bracket)


def test_the_measurement_thread_is_a_thread_of_its_own():
    source = SOURCES.joinpath("MeasurementThread.swift").read_text()
    assert "Thread {" in source and "thread.start()" in source and "NSCondition()" in source
    assert "withCheckedThrowingContinuation" in source
    assert "Task" not in source.replace("Task)", "")  # no Swift-concurrency task does the blocking work


def test_only_sendable_values_cross_into_the_detached_task():
    app = parse(SOURCES.joinpath("BenchRunnerApp.swift").read_bytes()).root_node
    (detached,) = [c for c in descendants(app, "call_expression") if text(c.children[0]) == "Task.detached"]
    (closure,) = [c for c in descendants(detached, "lambda_literal") if c.parent.type == "call_suffix"]
    captured = {text(n) for n in descendants(closure, "simple_identifier")} - {
        "JobRunner", "GenericJobRunner", "isGenericJob", "jobId", "paths", "device", "progress", "show", "run",
        "appState"}
    assert captured == set(), f"the detached task captures {captured}"
    # appState crosses too: AppStateWatch is Sendable (its state behind a lock), checked here.
    watch = SOURCES.joinpath("AppState.swift").read_text()
    assert "final class AppStateWatch: @unchecked Sendable" in watch and "lock.withLock" in watch
    assert calls_to(closure, "JobRunner"), "the JobRunner is made inside the task"
    start = text(the_function("start", "BenchRunnerApp.swift"))
    assert "let show: @Sendable (String) -> Void" in start
    assert "progress: @escaping @Sendable (String) -> Void" in SOURCES.joinpath("JobRunner.swift").read_text()


# -- application state: measuring only in the foreground --------------------------------------------------------------


def test_app_states_the_runner_names_are_the_schemas():
    source = SOURCES.joinpath("AppState.swift").read_text()
    named = set(re.findall(r'(?:return|,)\s*"(active|inactive|background|unknown|\w+)"\)?', source))
    assert named == set(contract.schema("result")["$defs"]["app_state"]["properties"]["state"]["enum"])


def test_the_left_foreground_message_starts_with_what_the_host_looks_for():
    source = SOURCES.joinpath("AppState.swift").read_text()
    assert f'static let leftForegroundPrefix = "{contract.APP_LEFT_FOREGROUND}"' in source
    requirement = text(the_function("requireForeground", "AppState.swift"))
    assert "leftForegroundPrefix" in requirement and "JobError.leftForeground" in requirement


def test_every_measured_prediction_is_bracketed_by_foreground_checks():
    """Warm-up and samples go through foregroundSample, which checks the state before and after the prediction;
    a step error seen out of the foreground stops the job instead of being recorded as the step's error."""
    run = next(f for f in functions_named("run", "JobRunner.swift") if "warmup" in text(f))
    assert "MeasurementThread" not in text(run) and len(calls_to(run, "foregroundSample")) == 2
    bracket = text(the_function("foregroundSample", "JobRunner.swift"))
    _before, rest = bracket.split("requireForeground", 1)
    assert "measuring.run" in rest.split("requireForeground", 1)[0]  # the prediction sits between the two checks
    measure = text(the_function("measure", "JobRunner.swift"))
    catch = measure[measure.index("} catch {"):]
    assert catch.index("requireForeground") < catch.index("record.error")
    written = text(the_function("finish", "JobRunner.swift")) + text(the_function("writePartial", "JobRunner.swift"))
    assert written.count("result.app_states = appState.history") == 2


# -- compile once per device per run ------------------------------------------------------------------------------


def test_compiled_models_are_reused_kept_atomically_and_only_temporaries_deleted():
    """models[].compiled: reuse what an earlier job of the run kept (no compile, `reused`), keep what this job
    compiles (moved beside its name, then rename(2)), delete only the compiled models no later job keeps."""
    compile_ = text(the_function("compile", "JobRunner.swift"))
    assert "CompiledStore.holds(" in compile_ and "record.reused = true" in compile_
    assert compile_.index("CompiledStore.holds(") < compile_.index("MLModel.compileModel(at:")
    assert "CompiledStore.keep(" in compile_ and "temporaryCompiled.append(" in compile_
    keep = text(the_function("keep", "Storage.swift"))
    assert keep.index("moveItem(at:") < keep.index("rename(temporary.path, url.path)")
    remove = text(the_function("removeCompiledModels", "JobRunner.swift"))
    assert "temporaryCompiled" in remove and "compiled.values" not in remove


def test_a_reused_package_records_no_cold_load():
    (step,) = [f for f in functions_named("run", "JobRunner.swift") if "cold_load_ns" in text(f)]
    body = text(step)
    for package in ("encoder", "decoder"):
        guard = f'if !reusedPackages.contains("\\(model.variant_id)/{package}")'
        assert guard in body, guard
        assert body.index(guard) < body.index(f"record.cold_load_ns.{package} =")



# -- generic jobs (imported models: bench.generic-job / bench.generic-result) ---------------------------------------

GENERIC_RESULT_STRUCTS = {
    "GenericResultFile": (),
    "GenericCompileRecord": ("$defs", "compile"),
    "GenericStepRecord": ("$defs", "step"),
    "GenericSample": ("$defs", "sample"),
    "GenericOutputRecord": ("$defs", "output"),
    "GenericComputePlanRecord": ("$defs", "compute_plan"),
    "DeviceConditions": ("$defs", "device"),
    "OpRecord": ("$defs", "op"),
    "AppStateChange": ("$defs", "app_state"),
}
GENERIC_JOB_STRUCTS = {
    "GenericJob": (),
    "GenericJobModel": ("$defs", "model"),
    "GenericJobInput": ("$defs", "input"),
    "GenericFeature": ("$defs", "feature"),
    "JobStep": ("$defs", "step"),
}


@pytest.mark.parametrize("struct_name", sorted(GENERIC_RESULT_STRUCTS))
def test_generic_result_structs_encode_exactly_the_schema_keys(struct_name):
    struct = swift_structs()[struct_name]
    schema = schema_object("generic-result", GENERIC_RESULT_STRUCTS[struct_name])
    keys = struct.json_keys()
    assert set(keys) == set(schema["properties"]), struct_name
    for key in schema["required"]:
        assert not keys[key].optional or keys[key].nullable_wrapper, f"{struct_name}.{key} is required: @Nullable"
    for key, prop in keys.items():
        assert prop.optional == allows_null("generic-result", schema["properties"][key]), f"{struct_name}.{key}"


@pytest.mark.parametrize("struct_name", sorted(GENERIC_JOB_STRUCTS))
def test_generic_job_structs_decode_only_schema_keys(struct_name):
    struct = swift_structs()[struct_name]
    schema = schema_object("generic-job", GENERIC_JOB_STRUCTS[struct_name])
    keys = struct.json_keys()
    required = set(schema.get("required", []))
    assert set(keys) <= set(schema["properties"])
    for key, prop in keys.items():
        assert prop.optional == allows_null("generic-job", schema["properties"][key]) or key in required, key
        if not prop.optional:
            assert key in required, f"{struct_name}.{key} is non-optional in Swift but optional in the job schema"
    assert required - set(keys) <= JOB_KEYS_IGNORED_BY_RUNNER


def test_generic_names_and_types_match_the_host():
    names = static_string_constants("GenericContractNames")
    assert names == {"jobSchema": contract.GENERIC_JOB_KIND, "resultSchema": contract.GENERIC_RESULT_KIND,
                     "jobSchemaVersion": contract.GENERIC_JOB_VERSION,
                     "resultSchemaVersion": contract.GENERIC_RESULT_VERSION, "outputsFolder": contract.OUTPUTS_DIR}
    fed = set(contract.schema("generic-job")["$defs"]["feature"]["properties"]["dtype"]["enum"]) - {"uint8"}
    assert string_literals_in_function("arrayType") == fed  # uint8 is the images' pixel bytes
    written = set(contract.schema("generic-result")["$defs"]["output"]["properties"]["dtype"]["enum"])
    assert string_literals_in_function("outputType") == written
    source = SOURCES.joinpath("GenericJobRunner.swift").read_text()
    assert set(re.findall(r'status(?:\s*=|:)\s*"(\w+)"', source)) <= set(contract.RESULT_STATUSES)
    assert '"\\(ContractNames.resultsFolder)/\\(jobId)/\\(GenericContractNames.outputsFolder)/\\(step)/' \
           '\\(inputId)__\\(name).bin"' in source  # the layout validate_generic_result accepts


def test_the_app_runs_generic_jobs_with_the_generic_runner():
    app = SOURCES.joinpath("BenchRunnerApp.swift").read_text()
    assert "GenericJobRunner.isGenericJob(jobId: jobId, paths: paths)" in app
    header = text(the_function("isGenericJob", "GenericJobRunner.swift"))
    assert "GenericContractNames.jobSchema" in header


def test_generic_predictions_are_bracketed_and_on_the_measurement_thread():
    run = next(f for f in functions_named("run", "GenericJobRunner.swift") if "warmup" in text(f))
    assert len(calls_to(run, "foregroundPrediction")) == 2 and "prediction(" not in text(run)
    bracket = text(the_function("foregroundPrediction", "GenericJobRunner.swift"))
    _before, rest = bracket.split("requireForeground", 1)
    assert "measuring.run" in rest.split("requireForeground", 1)[0] and "MeasurementThread.shared" in bracket
    predict = text(the_function("predict", "GenericJobRunner.swift"))
    assert predict.index("makeState()") < predict.index("Monotonic.now()")  # the state is made off the clock
    # outputs are written and the plan read after the timed part
    assert text(run).index("writeOutputs(") > text(run).rindex("foregroundPrediction(")


def test_generic_results_are_fitted_and_finish_writes_done():
    encoded = text(the_function("encoded", "GenericJobRunner.swift"))
    assert ".fittedToSchema()" in encoded
    finish = text(the_function("finish", "GenericJobRunner.swift"))
    assert finish.index("failedResult") < finish.index("ContractNames.doneFile")
    (function,) = extension_functions("GenericStepRecord", "fittedToSchema")
    assigned = {text(a.children[0]).split(".", 1)[1] for a in descendants(function, "assignment")
                if text(a.children[0]).startswith("fitted.")}
    assert {"error", "compute_plan_error", "outputs_error", "compute_plan"} <= assigned


def test_golden_generic_result_keys_are_exactly_what_swift_writes():
    result = json.loads((Path(__file__).parent / "golden" / "generic-result.v1.json").read_text())
    structs = swift_structs()

    def keys(name):
        return set(structs[name].json_keys())

    assert set(result) == keys("GenericResultFile") and set(result["device"]) == keys("DeviceConditions")
    assert all(set(item) == keys("GenericCompileRecord") for item in result["compiles"])
    for step in result["steps"]:
        assert set(step) == keys("GenericStepRecord")
        assert all(set(s) == keys("GenericSample") for s in step["warmup"] + step["samples"])
        assert all(set(o) == keys("GenericOutputRecord") for o in step["outputs"])
        if step["compute_plan"]:
            assert set(step["compute_plan"]) == keys("GenericComputePlanRecord")
            assert all(set(op) == keys("OpRecord") for op in step["compute_plan"]["model"])
