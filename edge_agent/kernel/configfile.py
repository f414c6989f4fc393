"""Load a YAML file into a pydantic model, with errors that name the file, line and field.

Shared by the agent and central. String values may reference environment variables as
`${NAME}` or `${NAME:-default}`, so secrets need not live in the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration file cannot be used; the message says where and what to do."""


def load_yaml_model(path: str | Path, model: type[ModelT], example: str = "") -> ModelT:
    path = Path(path)
    hint = f"; start from {example}" if example else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found{hint}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values{hint}")
    lines = _line_numbers(root)
    data = _expand_env(data, (), path, lines)
    try:
        return model.model_validate(data, context={"config_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, lines)) from None


def _line_numbers(node: yaml.Node | None, prefix: tuple[Any, ...] = ()) -> dict[tuple, int]:
    """Map each key path to the 1-based line where it appears in the YAML text."""
    found: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, key_node.value)
            found[key] = key_node.start_mark.line + 1
            found.update(_line_numbers(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, index)
            found[key] = item.start_mark.line + 1
            found.update(_line_numbers(item, key))
    return found


def _line_of(loc: tuple, lines: dict[tuple, int]) -> int | None:
    loc = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def _expand_env(value: Any, loc: tuple, path: Path, lines: dict[tuple, int]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k), path, lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), path, lines) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        line = _line_of(loc, lines)
        where = f"{path}:{line}" if line else str(path)
        field = ".".join(str(p) for p in loc)
        raise ConfigError(
            f"{where}: {field}: environment variable {name} is not set; "
            f"export {name}=... or write ${{{name}:-default}}"
        )

    return _ENV_REF.sub(substitute, value)


def _describe(exc: ValidationError, path: Path, lines: dict[tuple, int]) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(loc, lines)
        where = f"{path}:{line}" if line else str(path)
        if err["type"] == "extra_forbidden":
            text = "unknown field; check its spelling against the example configuration"
        elif err["type"] == "missing":
            text = "required field is missing"
        else:
            text = f"{err['msg']} (got {err.get('input')!r})"
        messages.append(f"{where}: {field}: {text}")
    noun = "error" if len(messages) == 1 else "errors"
    return f"{path}: {len(messages)} configuration {noun}\n  " + "\n  ".join(messages)


def resolve_path(value: Path, info_context: dict[str, Any] | None) -> Path:
    """Relative paths in a config file are relative to the file's own folder."""
    if value.is_absolute() or not info_context or "config_dir" not in info_context:
        return value
    return (Path(info_context["config_dir"]) / value).resolve()
