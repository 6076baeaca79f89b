"""What every results table made from a grid recipe shares: the recipe's runs read back from their
manifest.json (never stage internals), the record of what measured each run, and the files a table
writes: bench/results/TABLE.json (the runs, the summary, the markdown table and that record) and
bench/results/TABLE.png.

A table never trains. Its runs are made by `vpns-deploy run bench/recipes/TABLE.toml` (resumable,
skips finished runs); a table missing runs names that command and writes nothing. A run already in
the committed JSON (same name, same creation time) keeps the record of what measured it; a new run is
credited to this checkout's commit and machine.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"
RECIPES = ROOT / "bench/recipes"


class MissingRuns(SystemExit):
    """A table's recipe has runs that are not finished: regenerating it would train, so it stops."""


def rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass(frozen=True)
class GridRuns:
    """A grid recipe's finished runs (name -> directory, in the recipe's order) and the names it lacks."""

    recipe: Path
    runs: dict[str, Path]
    missing: list[str]

    @property
    def command(self) -> str:
        return f"vpns-deploy run {rel(self.recipe)}"


def grid_runs(recipe: Path, needs: str = "manifest.json") -> GridRuns:
    """Every variant of `recipe` whose run directory holds `needs` (relative run.out paths are taken from
    the repository root, where the bench recipes are run)."""
    from pipelines.recipe import load_grid

    grid = load_grid(recipe)
    runs, missing = {}, []
    for v in grid.variants:
        out = v.recipe.out if v.recipe.out.is_absolute() else ROOT / v.recipe.out
        if (out / needs).is_file():
            runs[v.name] = out
        else:
            missing.append(v.name)
    return GridRuns(Path(recipe), runs, missing)


def require_all(grid: GridRuns, partial: bool) -> None:
    if grid.missing and not partial:
        shown = ", ".join(grid.missing[:4]) + (f" and {len(grid.missing) - 4} more" if len(grid.missing) > 4 else "")
        raise MissingRuns(f"error: {len(grid.missing)} of {len(grid.missing) + len(grid.runs)} runs of "
                          f"{rel(grid.recipe)} are not finished ({shown}); make them with `{grid.command}` "
                          "(it skips finished runs and resumes an interrupted one), then run this again")
    if not grid.runs:
        raise MissingRuns(f"error: no finished run of {rel(grid.recipe)}; make them with `{grid.command}`")


def shipped(top1_plain: float, top1_prompted: float | None, fold: bool | None) -> float:
    """Test top-1 of the model the product ships: prompted only where validation decided to fold the
    prompt in, never the better of the two on test."""
    return top1_prompted if fold and top1_prompted is not None else top1_plain


def run_record(run: Path) -> dict:
    """One run as the tables read it, from its manifest.json."""
    manifest = json.loads((run / "manifest.json").read_text())
    cfg, m = manifest["config"], manifest["metrics"]
    fold = (m.get("prompt_decision") or {}).get("fold")
    steps, curve = 0, []
    for e in m["epochs"]:
        steps += e["optimizer_steps"]
        if e.get("val_acc_plain") is not None:
            curve.append([steps, e["val_acc_plain"]])
    structure = m.get("structure") or {}
    return {
        "created": manifest["created"], "method": cfg["method"], "mode": cfg["mode"], "sparsity": cfg["sparsity"],
        "seed": cfg["seed"], "distill": cfg["distill"], "train_subset": cfg["train_subset"],
        "epochs": [cfg["epochs_mask"], cfg["epochs_tune"]], "input_size": manifest["model"]["inputs"]["size"],
        "top1_plain": m["top1_plain"], "top1_prompted": m.get("top1_prompted"), "prompt_folded": fold,
        "top1": shipped(m["top1_plain"], m.get("top1_prompted"), fold), "dense_top1": m.get("dense_top1"),
        "sparsity_achieved": m.get("sparsity"), "optimizer_steps": steps,
        "train_seconds": sum(e["train_seconds"] for e in m["epochs"]), "val_curve": curve,
        **({"macs": structure["macs"], "params": structure["params"]} if "macs" in structure else {}),
        **made_by(manifest),
    }


def made_by(manifest: dict) -> dict:
    """The machine and the source commit a run was made on, as its manifest records them (runs made
    before manifests recorded the commit: None)."""
    versions = manifest["versions"]
    return {"platform": versions["platform"], "commit": versions.get("vpns-deploy commit")}


def commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def provenance(records: dict[str, dict], previous: dict | None, command: str) -> list[dict]:
    """Who measured which run: groups of runs with the same commit, machine and command. A run whose
    name and creation time are in `previous` (the committed JSON) keeps its group there. The commit is
    the one the run records; a run that records none is stamped with the summarising commit, marked so."""
    kept: dict[str, dict] = {}
    for group in (previous or {}).get("measured", []):
        for name in group["runs"]:
            old = (previous.get("runs") or {}).get(name, {})
            if name in records and old.get("created") == records[name].get("created"):
                kept[name] = group
    groups: list[dict] = []
    for name, record in records.items():
        made = record.get("commit") or f"{commit()} (summarised; the run records no commit)"
        group = kept.get(name) or {"commit": made, "machine": record.get("platform"),
                                   "command": command, "dates": []}
        match = next((g for g in groups if all(g[k] == group[k] for k in ("commit", "machine", "command"))), None)
        if match is None:
            match = {**{k: group[k] for k in ("commit", "machine", "command")}, "dates": [], "runs": []}
            groups.append(match)
        match["runs"].append(name)
        day = (record.get("created") or "")[:10]
        dates = sorted(set(match["dates"]) | set(group.get("dates", [])) | ({day} if day else set()))
        match["dates"] = [dates[0], dates[-1]] if dates else []
    return groups


def write(table: str, result: dict, plot: Callable[[dict, Path], None], out: Path = RESULTS) -> dict:
    """TABLE.json and TABLE.png under `out`; prints the markdown tables."""
    from vpns_deploy.atomic import atomic_write, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{table}.json", result)
    atomic_write(out / f"{table}.png", lambda tmp: plot(result, Path(tmp)))
    for name, md in result["markdown"].items():
        print(f"\n{name}:\n{md}")
    return result


def regenerate(table: str, summarise: Callable[[dict[str, dict]], dict], plot: Callable[[dict, Path], None],
               recipe: Path | None = None, out: Path = RESULTS, partial: bool = False,
               record: Callable[[Path], dict] = run_record, needs: str = "manifest.json") -> dict:
    """A grid table from its recipe's runs: the records, their summary (summarise(records) -> the
    summary's keys, "markdown" among them: {title: table}), their provenance, the JSON and the PNG."""
    recipe = recipe or RECIPES / f"{table}.toml"
    grid = grid_runs(recipe, needs)
    require_all(grid, partial)
    records = {name: record(path) for name, path in grid.runs.items()}
    previous_path = out / f"{table}.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
    result = {"table": table, "command": f"python -m bench {table}", "recipe": rel(recipe),
              "runs_command": grid.command, "missing": grid.missing,
              "measured": provenance(records, previous, grid.command), **summarise(records), "runs": records}
    return write(table, result, plot, out)


def table_args(doc: str | None, argv: list[str] | None):
    """The options every grid table takes (python -m bench TABLE [--partial] [--out DIR] [--recipe FILE])."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, default=None, help="the grid recipe (default: bench/recipes/TABLE.toml)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where TABLE.json and TABLE.png go")
    p.add_argument("--partial", action="store_true",
                   help="summarise the finished runs even where some are missing (they are listed in the JSON)")
    return p.parse_args(argv)
