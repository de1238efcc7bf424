"""A read-only union of filesystems, the way overlayfs combines several ``lowerdir`` layers.

Talos boots with extensions by mounting every extension squashfs and the rootfs squashfs as the
lower layers of one read-only overlay (siderolabs/talos internal/app/init/main.go); an offline
view of that root needs the same union. Rules (Documentation/filesystems/overlayfs.rst, lower
layers only): the first layer holding a name decides what it is; a directory is merged with
same-named directories of the layers below until a layer holds a non-directory there (it hides the
rest); whiteouts and opaque markers are honoured (a 0/0 character device hides the name,
``trusted.overlay.opaque=y`` stops the merge) although squashfs layers built for Talos carry none.
"""

from __future__ import annotations

import stat as stat_mod
from typing import Any, Iterator

from immutools.fs.base import FileSystem, Stat
from immutools.limits import Limits

_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


class _Node:
    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[int, Any]]):
        self.parts = parts          # (layer index, backend ref), topmost first


class LayeredFileSystem(FileSystem):
    """``layers[0]`` is the top layer (overlayfs' first ``lowerdir``)."""

    fstype = "overlay"

    def __init__(self, layers: list[FileSystem], names: list[str] | None = None, limits: Limits | None = None):
        if not layers:
            raise ValueError("a union needs at least one layer")
        super().__init__(limits or layers[0].limits)
        self.layers = list(layers)
        self.names = list(names or [f"layer {i}" for i in range(len(layers))])

    def _is_whiteout(self, layer: int, ref: Any) -> bool:
        st = self.layers[layer]._stat_node(ref)
        return stat_mod.S_ISCHR(st.mode) and (st.rdev or 0) == 0

    def _opaque(self, layer: int, ref: Any) -> bool:
        try:
            xattrs = self.layers[layer]._xattrs_node(ref)
        except Exception:  # noqa: BLE001 - xattrs are optional here
            return False
        return any(xattrs.get(k) == b"y" for k in _OPAQUE)

    def _merge(self, candidates: list[tuple[int, Any]]) -> _Node | None:
        """The union node for one name, given every layer's ref for it (topmost first)."""
        parts: list[tuple[int, Any]] = []
        for layer, ref in candidates:
            if self._is_whiteout(layer, ref):
                break
            st = self.layers[layer]._stat_node(ref)
            if not parts:
                parts.append((layer, ref))
                if not st.is_dir or self._opaque(layer, ref):
                    break
                continue
            if not st.is_dir:
                break
            parts.append((layer, ref))
            if self._opaque(layer, ref):
                break
        return _Node(parts) if parts else None

    def _root(self) -> _Node:
        return self._merge([(i, fs._root()) for i, fs in enumerate(self.layers)])

    def _stat_node(self, ref: _Node) -> Stat:
        layer, inner = ref.parts[0]
        return self.layers[layer]._stat_node(inner)

    def _list_node(self, ref: _Node) -> Iterator[tuple[str, _Node]]:
        order: list[str] = []
        found: dict[str, list[tuple[int, Any]]] = {}
        for layer, inner in ref.parts:
            for name, child in self.layers[layer]._list_node(inner):
                if name not in found:
                    order.append(name)
                    found[name] = []
                found[name].append((layer, child))
        for name in order:
            node = self._merge(found[name])
            if node is not None:
                yield name, node

    def _lookup_child(self, ref: _Node, name: str) -> _Node | None:
        candidates = []
        for layer, inner in ref.parts:
            child = self.layers[layer]._lookup_child(inner, name)
            if child is not None:
                candidates.append((layer, child))
        return self._merge(candidates) if candidates else None

    def _read_node(self, ref: _Node, offset: int, length: int) -> bytes:
        layer, inner = ref.parts[0]
        return self.layers[layer]._read_node(inner, offset, length)

    def _readlink_node(self, ref: _Node) -> str:
        layer, inner = ref.parts[0]
        return self.layers[layer]._readlink_node(inner)

    def _xattrs_node(self, ref: _Node) -> dict[str, bytes]:
        layer, inner = ref.parts[0]
        return self.layers[layer]._xattrs_node(inner)

    def _node_key(self, ref: _Node) -> Any:
        return tuple((layer, self.layers[layer]._node_key(inner)) for layer, inner in ref.parts)

    def layer_of(self, path: str, follow: bool = True) -> str:
        """Name of the layer a path comes from (its topmost part)."""
        return self.names[self._resolve(path, follow).parts[0][0]]
