"""Package-level import graph of the four layers (docs/ARCHITECTURE.md), run from the repo root.

Prints each package's imports of the others and exits 1 when one points up a layer (tests/test_layering.py).
"""
import ast
import collections
import pathlib
import sys

# package -> the packages it may import (docs/ARCHITECTURE.md, "Layers")
MAY_IMPORT = {
    "vpns_deploy": set(),
    "calibration": {"vpns_deploy"},
    "export": {"calibration", "vpns_deploy"},
    "pipelines": {"export", "calibration", "vpns_deploy"},
}


def imports(root: pathlib.Path) -> dict[str, set[tuple[str, str, str]]]:
    """package -> {(imported package, importing module, imported name)} for absolute imports."""
    edges: dict[str, set[tuple[str, str, str]]] = collections.defaultdict(set)
    for p in MAY_IMPORT:
        for f in sorted((root / p).rglob("*.py")):
            mod = ".".join(f.relative_to(root).with_suffix("").parts)
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    top = n.split(".")[0]
                    if top in MAY_IMPORT and top != p:
                        edges[p].add((top, mod, n))
    return edges


def main() -> int:
    edges, bad = imports(pathlib.Path(".")), 0
    for p, allowed in MAY_IMPORT.items():
        print(p, "->", sorted({t for t, _, _ in edges[p]}))
        for t, m, n in sorted(edges[p]):
            if t not in allowed:
                bad += 1
                print(f"    upward import: {m} imports {n}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
