"""Load a YAML file into a pydantic model; every problem is one line naming file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bench.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


def load_yaml(path: Path | str, model: type[Model]) -> Model:
    """Parse `path` and validate it as `model`; raise InputError("file:line: key: reason")."""
    path = Path(path)
    root = _compose(path)
    data = _to_python(root, path)
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise _first_problem(err, root, path) from None


def _compose(path: Path):
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read: {err}", file=str(path)) from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        raise InputError(f"invalid YAML: {err.problem or err.context}", file=str(path), line=line) from None


def _to_python(node, path: Path) -> Any:
    import yaml

    if node is None:
        return None
    try:
        return yaml.SafeLoader(" ").construct_document(node)
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else None
        raise InputError(f"invalid YAML: {err.problem}", file=str(path), line=line) from None


def _first_problem(err: ValidationError, root, path: Path) -> InputError:
    problem = err.errors()[0]
    location = tuple(problem["loc"])
    node, line = _node_at(root, location)
    key = ".".join(str(part) for part in location) or "(top level)"
    message = problem["msg"].removeprefix("Value error, ")  # a validator's own message reads better bare
    if problem["type"] == "missing":
        message = "required key is missing"
    elif problem["type"] == "extra_forbidden":
        message = "unknown key"
    more = len(err.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return InputError(f"{key}: {message}{suffix}", file=str(path), line=line)


def _node_at(root, location: tuple) -> tuple[Any, int | None]:
    """Walk the composed YAML tree along a pydantic error location; return the deepest node found."""
    import yaml

    node = root
    line = root.start_mark.line + 1 if root is not None else None
    for part in location:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    child = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return node, line
