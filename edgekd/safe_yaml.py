"""YAML from files a user (or an attacker) wrote, read within bounds.

PyYAML's safe loader refuses arbitrary objects but not size: a few hundred bytes of nested
aliases expand to billions of values once anything walks them ("billion laughs"), and deep
nesting overflows Python's stack. Here the node graph is composed first and measured (bytes,
depth, values after alias expansion) before any Python object is built.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a recipe is a few KB; a megabyte is not a recipe
MAX_DEPTH = 64
MAX_VALUES = 100_000  # scalars, sequences and mappings, counted with aliases expanded


class YamlError(ValueError):
    """The text is not YAML edgekd will read. `line` (1-based) is where, when known; the
    message says why, and callers prefix the file or flag it came from."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class YamlSyntaxError(YamlError):
    """Not YAML at all (as opposed to YAML over the bounds)."""


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        text = data
    else:
        if len(data) > MAX_BYTES:
            raise YamlError(f"{len(data):,} bytes, more than the {MAX_BYTES:,} allowed")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(
                f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
            ) from None
    if len(text) > MAX_BYTES:
        raise YamlError(f"{len(text):,} characters, more than the {MAX_BYTES:,} allowed")
    if "\x00" in text:
        raise YamlError(f"binary data (a NUL byte at offset {text.index(chr(0))}), not YAML text")
    return text.removeprefix("\ufeff")


def _measure(root: yaml.Node) -> None:
    """Depth and expanded size of a composed graph, iteratively (no recursion to overflow)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    on_path: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            size = 1 + sum(sizes[id(c)] for c in children)
            if size > MAX_VALUES:
                raise YamlError(
                    f"expands to more than {MAX_VALUES:,} values: nested aliases?",
                    node.start_mark.line + 1,
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YamlError("an alias refers to itself", node.start_mark.line + 1)
        if depth > MAX_DEPTH:
            raise YamlError(f"nested more than {MAX_DEPTH} levels deep", node.start_mark.line + 1)
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in _children(node) if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def compose(data: bytes | str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document within the bounds; returns (value, node graph).

    Raises YamlError for oversized, non-UTF-8, binary, too deep or alias-bomb input, and for
    YAML syntax errors (with the line).
    """
    text = _decode(data)
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _measure(node)
        return loader.construct_document(node), node
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark else None
        raise YamlSyntaxError(f"not valid YAML: {problem}", line) from None
    except RecursionError:
        raise YamlError(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def load(data: bytes | str) -> Any:
    """The value of one YAML document, within the bounds (see `compose`)."""
    return compose(data)[0]
