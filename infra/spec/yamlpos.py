"""YAML loading that remembers where every key and value stands, for file:line:col messages.

PyYAML's ``safe_load`` forgets positions and silently keeps the last of two duplicate keys (a classic
source of "my change had no effect"); composing the node graph ourselves fixes both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based, as editors count
    col: int  # 1-based


@dataclass
class PositionedYaml:
    data: Any
    value_marks: dict[PathKey, Mark] = field(default_factory=dict)
    key_marks: dict[PathKey, Mark] = field(default_factory=dict)
    duplicate_keys: list[tuple[PathKey, Mark]] = field(default_factory=list)

    def mark_of(self, path: PathKey, *, prefer_key: bool = False) -> Mark:
        """The closest known position for ``path``: its key or value, else its nearest ancestor's."""
        for depth in range(len(path), -1, -1):
            prefix = path[:depth]
            if prefer_key and prefix in self.key_marks:
                return self.key_marks[prefix]
            if prefix in self.value_marks:
                return self.value_marks[prefix]
        return Mark(1, 1)


class YamlSyntaxError(Exception):
    def __init__(self, message: str, mark: Mark, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.hint = hint


MAX_NODES = 1_000_000
"""Nodes one document may expand to through aliases (a "billion laughs" file must not hang the CLI)."""

# PyYAML's words for the commonest slips, and what usually causes them.
INDENTATION_HINT = "check the indentation of this line and the one above"
PROBLEM_HINTS = (
    ("expected ',' or ']'", "close the list with ']', or quote a value that contains ',' or ':'"),
    ("expected ',' or '}'", "close the mapping with '}', or quote a value that contains ',' or ':'"),
    ("mapping values are not allowed here", "check this line's indentation, or quote a value that contains ': '"),
    ("'\\t'", "indent with spaces: YAML does not allow tabs"),
    ("could not find expected ':'", "every line of a mapping needs 'key: value'; check for an unclosed quote"),
    ("expected <block end>", INDENTATION_HINT),
    ("found unexpected end of stream", "a quote or bracket opened above is not closed"),
    ("but got '<stream end>'", "a quote or bracket opened above is not closed"),
)


def _problem_hint(problem: str) -> str | None:
    for words, hint in PROBLEM_HINTS:
        if words in problem:
            return hint
    return None


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, result: PositionedYaml) -> None:
        self.loader = loader
        self.result = result
        self.open_nodes: set[int] = set()  # ids of the collections being built: an alias to one recurses
        self.count = 0

    def build(self, node: yaml.Node, path: PathKey, where: Mark | None = None) -> Any:
        """The value of ``node`` at ``path``; ``where`` is the key that holds it, for errors."""
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlSyntaxError(f"the document expands to more than {MAX_NODES} values through aliases",
                                  _mark(node), "use fewer nested aliases (*name)")
        self.result.value_marks[path] = _mark(node)
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return self.loader.construct_object(node, deep=True)
        if id(node) in self.open_nodes:
            raise YamlSyntaxError("this alias refers to a collection that contains it", where or _mark(node),
                                  "a spec cannot be recursive: copy the values instead")
        self.open_nodes.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self.build(child, (*path, index)) for index, child in enumerate(node.value)]
        finally:
            self.open_nodes.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Any, Any]:
        explicit = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        self.loader.flatten_mapping(node)  # resolve YAML merge keys (<<: *anchor): merged pairs come first
        merged = len(node.value) - explicit
        out: dict[Any, Any] = {}
        written: set[str] = set()  # keys written in this mapping itself (overriding a merged key is the point)
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | bool | float) or key is None:
                raise YamlSyntaxError("mapping keys must be plain scalars", _mark(key_node))
            child: PathKey = (*path, str(key))
            if index >= merged:
                if str(key) in written:
                    self.result.duplicate_keys.append((child, _mark(key_node)))
                written.add(str(key))
            self.result.key_marks[child] = _mark(key_node)
            out[str(key)] = self.build(value_node, child, _mark(key_node))
        return out


def load_positioned(text: str) -> PositionedYaml:
    """Parse one YAML document; raise ``YamlSyntaxError`` with a 1-based position on bad syntax."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks the characters already
        root = loader.get_single_node()
        result = PositionedYaml(data=None)
        if root is not None:
            result.data = _Builder(loader, result).build(root, ())
        return result
    except yaml.MarkedYAMLError as exc:
        problem_mark = exc.problem_mark or exc.context_mark
        mark = Mark(problem_mark.line + 1, problem_mark.column + 1) if problem_mark else Mark(1, 1)
        message = exc.problem or exc.context or "cannot parse"
        context_mark = exc.context_mark
        if exc.problem and exc.context and context_mark is not None:
            # "while parsing a flow sequence" names where the broken construct began, often the real slip.
            where = (context_mark.line + 1, context_mark.column + 1)
            context = exc.context if where == (mark.line, mark.col) else (
                f"{exc.context} that starts at line {where[0]}, column {where[1]}")
            message = f"{message}, {context}"
        raise YamlSyntaxError(f"invalid YAML: {message}", mark, _problem_hint(message)) from exc
    except yaml.reader.ReaderError as exc:  # not a MarkedYAMLError: it has a character offset only
        before = text[: exc.position]
        mark = Mark(before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1)
        raise YamlSyntaxError(f"invalid YAML: {exc.reason} (character #x{exc.character:04x})", mark,
                              "remove the control character") from exc
    finally:
        if loader is not None:
            loader.dispose()
