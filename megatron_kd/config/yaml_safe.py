"""YAML as recipes and sweeps are read: PyYAML's safe loader, plus two refusals. A key given
twice in one mapping is an error naming both lines (PyYAML keeps the last silently), and a
document whose aliases expand past MAX_NODES nodes is refused before it is built (a "billion
laughs" document otherwise exhausts memory as soon as anything walks or prints it)."""

from __future__ import annotations

import yaml

MAX_NODES = 100_000  # expanded nodes of one document; recipes and sweeps have a few hundred


class YAMLRefused(ValueError):
    """A well-formed document that is refused; the message names the line(s)."""


class _Loader(yaml.SafeLoader):
    pass


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
    """Nodes in `node` with every alias expanded (memoised: aliases share node objects)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise YAMLRefused(f"line {node.start_mark.line + 1}: an alias refers to itself; remove the "
                          "recursion")
    active.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, active) + _expanded_size(v, memo, active)
            if size > MAX_NODES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            size += _expanded_size(v, memo, active)
            if size > MAX_NODES:
                break
    active.discard(key)
    memo[key] = size
    if size > MAX_NODES:
        raise YAMLRefused(f"line {node.start_mark.line + 1}: aliases expand to more than "
                          f"{MAX_NODES:,} values; write the values out instead of nesting aliases")
    return size


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
