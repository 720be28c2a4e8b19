"""YAML as recipes and sweeps are read: PyYAML's safe loader, plus two refusals. A key given
twice in one mapping is an error naming both lines (PyYAML keeps the last silently), and a
document whose aliases expand past MAX_NODES nodes is refused before it is built (a "billion
laughs" document otherwise exhausts memory as soon as anything walks or prints it). Nesting
deeper than MAX_DEPTH levels (aliases expanded) is refused too: PyYAML's composer and
constructor recurse once per level, so a document thousands of levels deep would otherwise end
in a RecursionError (and every later walk of the value could too)."""

from __future__ import annotations

import yaml

MAX_NODES = 100_000  # expanded nodes of one document; recipes and sweeps have a few hundred
MAX_DEPTH = 64  # nesting levels of one document; recipes and sweeps nest four or five


class YAMLRefused(ValueError):
    """A well-formed document that is refused; the message names the line(s)."""


def _too_deep(line: int) -> YAMLRefused:
    return YAMLRefused(f"line {line}: values nested more than {MAX_DEPTH} levels deep; flatten them")


class _Loader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent, index):
        # Counted while composing, before the recursion that a deep document would exhaust.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _too_deep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode):
    first: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges are not duplicates
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            earlier = first.setdefault(key, line)
        except TypeError:  # an unhashable key: PyYAML's own error follows
            continue
        if earlier != line:
            raise YAMLRefused(f"key {key!r} appears twice in one mapping (lines {earlier} and "
                              f"{line}); keep one")
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _expanded_size(node, memo: dict, active: set) -> int:
    """Nodes in `node` with every alias expanded (memoised: aliases share node objects); also
    refuses an expansion deeper than MAX_DEPTH (a chain of aliases nests without deep text)."""
    return _expanded(node, memo, active)[0]


def _expanded(node, memo: dict, active: set) -> tuple[int, int]:
    """(expanded size, expanded depth) of `node`."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise YAMLRefused(f"line {node.start_mark.line + 1}: an alias refers to itself; remove the "
                          "recursion")
    active.add(key)
    size, depth = 1, 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        for child in children:
            child_size, child_depth = _expanded(child, memo, active)
            size, depth = size + child_size, max(depth, child_depth + 1)
            if size > MAX_NODES or depth > MAX_DEPTH:
                break
    active.discard(key)
    memo[key] = (size, depth)
    if size > MAX_NODES:
        raise YAMLRefused(f"line {node.start_mark.line + 1}: aliases expand to more than "
                          f"{MAX_NODES:,} values; write the values out instead of nesting aliases")
    if depth > MAX_DEPTH:
        raise _too_deep(node.start_mark.line + 1)
    return size, depth


def load(text: str):
    """The one document in `text` (None when empty). Raises yaml.YAMLError for syntax errors
    and YAMLRefused for duplicate keys and alias bombs."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()
