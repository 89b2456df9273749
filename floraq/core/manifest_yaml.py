"""Manifest YAML read safely: the node tree (for line numbers) and plain values.

Pure: text in, nodes and values out. Only the safe constructor is used, and anchors and
aliases are refused outright: a manifest never needs them, and they are how a few bytes
expand into gigabytes. Mapping keys must be plain, unique text.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from floraq.core.manifest_values import not_utf8_message
from floraq.core.problems import Problem
from floraq.errors import ManifestError

MAX_NESTING = 20

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_STR_TAG = "tag:yaml.org,2002:str"


_OPENERS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)


_CLOSERS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def decode_manifest(data: bytes, source: str) -> str:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        message = not_utf8_message(data[error.start])
        raise ManifestError([Problem(f"{source}: line {line}", message)]) from None


def compose(text: str, source: str) -> yaml.Node:
    """The YAML node tree, after refusing aliases, anchors and absurd nesting."""
    try:
        _scan_events(text, source)
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        where = at_mark(source, error.problem_mark or error.context_mark)
        what = " ".join(part for part in (error.context, error.problem) if part)
        raise ManifestError([Problem(where, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as error:
        raise ManifestError([Problem(source, f"YAML error: {error}")]) from None
    if root is None:
        raise ManifestError([Problem(source, "the manifest is empty; see jobs.example.yaml")])
    return root


def _scan_events(text: str, source: str) -> None:
    """Refuse aliases, anchors and deep nesting before anything is built from the text."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            message = "YAML anchors and aliases (&name, *name) are not supported; write it out"
            raise ManifestError([Problem(at_mark(source, event.start_mark), message)])
        if isinstance(event, _OPENERS):
            depth += 1
            if depth > MAX_NESTING:
                message = f"nested more than {MAX_NESTING} levels deep"
                raise ManifestError([Problem(at_mark(source, event.start_mark), message)])
        elif isinstance(event, _CLOSERS):
            depth -= 1


def construct(root: yaml.Node, source: str) -> Any:
    problems = list(_key_problems(root, source))
    if problems:
        raise ManifestError(problems)
    try:
        data = yaml.constructor.SafeConstructor().construct_document(root)
    except yaml.constructor.ConstructorError as error:
        message = f"YAML error: {error.problem}; floraq reads plain YAML only (no !!tags)"
        raise ManifestError([Problem(at_mark(source, error.problem_mark), message)]) from None
    if not isinstance(data, dict):
        raise ManifestError(
            [Problem(source, f"the manifest must be a mapping (key: value), not {describe(data)}")]
        )
    return data


def _key_problems(root: yaml.Node, source: str) -> Iterator[Problem]:
    """Mapping keys must be plain, unique text: YAML would otherwise keep the last silently."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                at = at_mark(source, key.start_mark)
                if not isinstance(key, yaml.ScalarNode):
                    yield Problem(at, "a key must be plain text, not a list or mapping")
                elif key.tag != _STR_TAG:
                    yield Problem(at, f"key {key.value!r} is not read as text; quote it")
                elif key.value in seen:
                    yield Problem(at, f"duplicate key '{key.value}'; YAML would keep only the last")
                else:
                    seen.add(key.value)
                stack.append(value)


def at_mark(source: str, mark: Any) -> str:
    """``jobs.yaml: line 3, column 7`` from a YAML mark (0-based inside)."""
    if mark is None:
        return source
    return f"{source}: line {mark.line + 1}, column {mark.column + 1}"


def line_of(root: yaml.Node, path: Sequence[str | int]) -> int:
    """The 1-based line of the node at ``path`` (or of its nearest ancestor)."""
    node = root
    for step in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            child = node.value[step] if step < len(node.value) else None
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def describe(value: object) -> str:
    """How a YAML value reads in a message: its kind, and the value when it is short."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"text ({value!r})" if len(value) <= 40 else "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"
