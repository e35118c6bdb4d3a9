"""A Griffe extension for the API reference site: rarekit's docstrings cross-reference with Sphinx roles
(:func:`count`, :class:`~rarekit.augment.masked_lm.MaskedLM`, :mod:`.strategy`), which Markdown does not know.

Each role becomes a mkdocs-autorefs link to the object it names, resolved as Sphinx would from the docstring's
scope (a name of the object, its module or a parent; a leading ``.`` searches the same way; a full
``rarekit.`` path as it is), else as the one object of rarekit with that name. The link is optional: an object
the site does not render (a private helper) reads as plain code. A role naming nothing that exists is a
warning, which fails the strict build.
"""
from __future__ import annotations

import html
import re
from collections.abc import Iterator

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>func|class|mod|meth|data|attr|exc|obj):`(?P<short>~?)(?P<text>[^`<]*?)"
                  r"(?:\s*<(?P<target>[^>`]+)>)?`")


def documented_objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (aliases share their target's docstring)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from documented_objects(member)  # type: ignore[arg-type]


def resolve(obj: griffe.Object, target: str, loader: griffe.GriffeLoader, by_name: dict[str, set[str]]) -> str | None:
    """The canonical path of the object ``target`` names from the scope of ``obj``, or None."""
    name = target.lstrip(".")
    head, _, rest = name.partition(".")
    try:
        path = name if head == "rarekit" else obj.resolve(head) + (f".{rest}" if rest else "")
        return loader.modules_collection[path].canonical_path
    except Exception:  # griffe's NameResolutionError, a KeyError, an alias to a package not loaded (torch, ...)
        candidates = {path for path in by_name.get(name.rsplit(".", 1)[-1], ()) if path.endswith(f".{name}")}
        return candidates.pop() if len(candidates) == 1 else None


def link(obj: griffe.Object, match: re.Match, loader: griffe.GriffeLoader, by_name: dict[str, set[str]]) -> str:
    """The optional autorefs link that replaces one role of the docstring of ``obj``, or a warning and code."""
    target = match["target"] or match["text"]
    title = match["text"] if match["target"] else target
    if match["short"]:
        title = title.rsplit(".", 1)[-1]
    path = resolve(obj, target, loader, by_name)
    if path is None:
        griffe.logger.warning(f"{obj.relative_filepath}:{obj.docstring.lineno}: :{match['role']}:`{target}` "
                              f"in the docstring of {obj.path} names nothing in rarekit")
        return f"`{title}`"
    return f'<autoref identifier="{html.escape(path)}" optional><code>{html.escape(title)}</code></autoref>'


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        by_name: dict[str, set[str]] = {}
        for obj in documented_objects(pkg):
            by_name.setdefault(obj.name, set()).add(obj.path)
        for obj in documented_objects(pkg):
            if obj.docstring is not None and ":`" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(lambda match: link(obj, match, loader, by_name), obj.docstring.value)
