"""Package-level import graph of the four layers (docs/ARCHITECTURE.md): run from the repo root."""
import ast, pathlib, collections, sys
pk = ["vpns_deploy", "pipelines", "export", "calibration"]
edges = collections.defaultdict(set)
for p in pk:
    for f in pathlib.Path(p).rglob("*.py"):
        mod = ".".join(f.with_suffix("").parts)
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for n in names:
                top = n.split(".")[0]
                if top in pk and top != p:
                    edges[p].add((top, mod, n))
for p in pk:
    print(p, "->", sorted({t for t, _, _ in edges[p]}))
    for t, m, n in sorted(edges[p]):
        if (p == "vpns_deploy" and t != "vpns_deploy") or (p == "export" and t == "calibration"):
            print("   ", m, "imports", n)
