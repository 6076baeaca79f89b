"""Stage `export`: deployment ONNX (prompt folded in where it helped on validation, label map folded in,
optionally a Resize in front) plus the dense reference, both parity-checked against PyTorch."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from calibration.feeds import nhwc_uint8
from calibration.calibrator import DEFAULT_CALIB_IMAGES, ImageCalibrationReader, calibration_images
from calibration.parity import check_parity, compare_graphs, require_parity
from export.deploy_graph import DeployGraph
from export.onnx_metadata import graph_metadata, stamp
from export.resize_front import caller_contract, frame, prepend_resize, reference_resize
from export.onnx_export import export_onnx
from export.int8_format import Int8Format, choose_int8_format
from export.precision import PRECISIONS, precision_path, to_fp16, to_int8
from export.precision_gate import INT8_RECIPES, RECIPE_TEXT, judge
from export.sparsity_check import weight_patterns
from export.tensorrt_engine import build_engine, probe
from pipelines.artifacts import DENSE_ONNX, MODEL_ONNX, TIMING_CACHE
from pipelines.load_run import LoadedRun, load_run
from pipelines.manifest import ExportRecord, Manifest
from pipelines.run_dir import now
from pipelines.stage_keys import ExportSettings, export_record
from vpns_deploy.config import DEFAULT_MAX_PRECISION_DROP
from vpns_deploy.errors import UserError
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet



def prompt_choice(manifest: Manifest, with_prompt: bool | None, has_prompt: bool) -> dict:
    """Whether model.onnx carries the prompt: the user's --prompt/--no-prompt, else the run's validation
    decision (compress), else (runs made before the decision existed) the old default, folded in."""
    decision = manifest.prompt_decision
    if not has_prompt:
        return {"fold": False, "by": "the run learned no prompt", "decision": decision}
    if with_prompt is not None:
        return {"fold": with_prompt, "by": "--prompt" if with_prompt else "--no-prompt", "decision": decision}
    if isinstance(decision, dict) and isinstance(decision.get("fold"), bool):
        return {"fold": decision["fold"], "by": decision.get("rule", "the run's decision"), "decision": decision}
    return {"fold": True, "by": "run has no prompt decision (made before it existed): folded in", "decision": None}


def check_export_options(precisions: tuple[str, ...], calib_images: int,
                         max_drop: float = DEFAULT_MAX_PRECISION_DROP) -> None:
    """One-line errors for --precision, --calib-images and --max-precision-drop, before any graph is made."""
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UserError(f"unknown precision {bad[0]!r}", f"pass --precision as a list of {', '.join(PRECISIONS)}")
    if calib_images < 1:
        raise UserError(f"--calib-images must be >= 1, got {calib_images}", "e.g. --calib-images 512")
    if not 0 <= max_drop <= 100:
        raise UserError(f"--max-precision-drop must be between 0 and 100 top-1 points, got {max_drop:g}",
                        f"e.g. --max-precision-drop {DEFAULT_MAX_PRECISION_DROP:g}")


def input_size(loaded, test) -> int:
    """The side the graph takes: the model's InputSpec.size, else the data's (square) size."""
    _, h, w = test.image_shape
    size = loaded.inputs.size or h
    if (h, w) != (size, size):
        raise UserError(f"the export data's images are {h}x{w} but the run's model takes {size}x{size}",
                        "pass --data with the run's data, or re-run compress")
    return size


def run_export(run_dir: Path, with_prompt: bool | None = None, data_spec: str | None = None,
               reporter: Reporter | None = None, precisions: tuple[str, ...] = ("fp32",),
               calib_images: int = DEFAULT_CALIB_IMAGES, trt: bool = False, require_trt: bool = False,
               graph_resize: bool = False, max_drop: float = DEFAULT_MAX_PRECISION_DROP) -> dict:
    """with_prompt None: the run's validation decision; graph_resize: accept any H x W (Resize folded in);
    max_drop: top-1 points a lower precision may lose against fp32 and still ship (precision_gate.py)."""
    reporter = reporter or Reporter()
    check_export_options(precisions, calib_images, max_drop)
    loaded = load_run(run_dir)
    run = loaded.run
    test = loaded.test_split(data_spec)
    size = input_size(loaded, test)
    choice = prompt_choice(run.manifest, with_prompt, loaded.prompt is not None)
    ships_prompt = choice["fold"]
    settings = ExportSettings(ships_prompt, tuple(precisions), graph_resize, calib_images, data_spec, trt, max_drop)
    job = ExportJob(loaded, test, size, torch.from_numpy(nhwc_uint8(test, 0, 2)), graph_resize, tuple(precisions),
                    data_spec, calib_images, reporter, trt, max_drop)
    graphs = [(MODEL_ONNX, loaded.compressed, loaded.prompt if ships_prompt else None, loaded.label_map),
              (DENSE_ONNX, loaded.dense, None, loaded.dense_label_map)]
    # All graphs (and engines) appear with the manifest that records them, or none do: a failed check
    # or Ctrl-C half way leaves the run exactly as it was (RunDir.staged()).
    with run.staged() as stage:
        results = {name: _export_graph(stage, job, name, net, prompt, label_map)
                   for name, net, prompt, label_map in graphs}
        shipped, left_out = _leave_out(stage, results, tuple(precisions), reporter)
        _say_prompt(choice, with_prompt, loaded, reporter)
        pattern = run.manifest.pattern
        if pattern:
            results[MODEL_ONNX]["nm_pattern"] = _check_pattern(stage.file(MODEL_ONNX), shipped, pattern, reporter)
        engines = _engines(stage, shipped, pattern is not None, require_trt, reporter) if trt else None
        run.manifest.export = ExportRecord(
            created=now(), ships_prompt=ships_prompt, prompt_choice=choice, graph_resize=graph_resize,
            caller_must_feed=_contract(job),
            graphs=results, precisions=shipped, calib_images=calib_images, tensorrt=engines,
            int8_format=job.int8.to_dict() if job.int8 is not None else None, max_precision_drop=max_drop,
            left_out=left_out)
        run.manifest.stages["export"] = export_record(run.manifest, settings, stage.names)
    return run.manifest.export.to_dict()


@dataclass
class ExportJob:
    """What every graph of one export shares: the run, its test images, the settings."""

    loaded: LoadedRun
    test: object  # the test split (parity, precision agreement)
    size: int
    example: torch.Tensor
    graph_resize: bool
    precisions: tuple[str, ...]
    data_spec: str | None
    calib_images: int
    reporter: Reporter
    tensorrt: bool = False  # engines asked for: int8 must be Q/DQ
    max_drop: float = DEFAULT_MAX_PRECISION_DROP  # the precision gate's tolerance, top-1 points
    calib: object = None  # the INT8 calibration images, drawn once for both graphs
    int8: Int8Format | None = None  # decided on the first graph, kept for the second
    recipes: dict = field(default_factory=dict)  # precision -> the recipe the compressed graph shipped (None: none)

    def calibration(self):
        if "int8" in self.precisions and self.calib is None:
            self.calib = calibration_images(self.loaded.train_split(self.data_spec), self.calib_images,
                                            self.loaded.run.manifest.run_seed)
        return self.calib


def _contract(job: ExportJob) -> dict:
    inputs = job.loaded.inputs
    return caller_contract(job.size, inputs.channels, inputs.crop_pct, inputs.interpolation, job.graph_resize)


def _export_graph(stage, job: ExportJob, name: str, net, prompt, label_map) -> dict:
    """One deployed graph, verified against its PyTorch reference, with its fp16/int8 siblings."""
    inputs, size, test = job.loaded.inputs, job.size, job.test
    reference = PromptedNet(net, inputs, prompt, label_map)  # like with like: same prompt, same map
    parity = {}

    # With the resize in front the test images (already resized and cropped) go in framed, so the front
    # hands them to the network unchanged and the strict check covers the whole file.
    feed = (lambda batch: frame(batch, size, inputs.crop_pct)) if job.graph_resize else None

    def verify(tmp: Path) -> None:
        parity["result"] = check_parity(tmp, reference, test, prompted=prompt is not None, feed=feed)
        require_parity(parity["result"], name)
        if job.graph_resize:
            parity["resize"] = resize_parity(tmp, reference, test, size, inputs)

    m = job.loaded.run.manifest
    props = graph_metadata(m.data.classes, _contract(job), m.model.arch,
                           "compressed" if name == MODEL_ONNX else "dense reference")

    def edit(model):
        if job.graph_resize:
            model = prepend_resize(model, size, inputs.crop_pct, inputs.interpolation)
        return stamp(model, props)  # the fp16/int8 siblings inherit it

    info = export_onnx(DeployGraph(net, inputs, prompt, label_map), job.example, stage.file(name), verify=verify,
                       edit=edit)
    stage.record(name)
    p = parity["result"]
    result = {"prompt_folded": prompt is not None, "label_map_folded": label_map is not None,
              "opset": info.opset, "ir_version": info.ir_version,
              "input": {"name": info.input_name, "type": info.input_type, "shape": info.input_shape, "layout": "NHWC"},
              "output_shape": info.output_shape, "ops": info.ops, "parity": p.to_dict(),
              **({"resize_parity": parity["resize"]} if job.graph_resize else {})}
    job.reporter.line(
        f"{name}: uint8 NHWC {info.input_shape} -> {info.output_shape}, "
        f"{'prompt folded in' if prompt is not None else 'no prompt'}"
        f"{', label map folded in' if label_map is not None else ''}; ORT vs PyTorch on {p.images} test "
        f"images: max |diff| {p.max_abs_diff:.1e}, top-1 agreement {p.top1_agreement:.2%}")
    if job.graph_resize:
        r = parity["resize"]
        job.reporter.line(f"{name}: Resize in the graph, {r['images']} test images at {r['height']}x{r['width']} vs "
                          f"torchvision resize + PyTorch: max |logit diff| {r['max_abs_diff']:.1e}, top-1 agreement "
                          f"{r['top1_agreement']:.2%}, pixels off by > 1 level {r['pixels_off_by_more_than_1']:.2%}")
    result["precisions"] = _derive(stage, stage.file(name), job)
    return result


def _say_prompt(choice: dict, with_prompt: bool | None, loaded: LoadedRun, reporter: Reporter) -> None:
    if with_prompt and loaded.prompt is None:
        reporter.line(f"note: this run ({loaded.run.manifest.method_name}) learned no prompt; none to fold in")
    elif loaded.prompt is not None:
        d = choice["decision"] or {}
        numbers = (f" (validation top-1 {d['val_top1_prompted']:.2%} with, {d['val_top1_plain']:.2%} without)"
                   if d.get("val_top1_plain") is not None and d.get("val_top1_prompted") is not None else "")
        reporter.line(f"prompt {'folded in' if choice['fold'] else 'left out'}: {choice['by']}{numbers}")


def _derive(run, fp32: Path, job: "ExportJob") -> dict:
    """fp16 / int8 siblings of a verified fp32 graph, each judged against it in ONNX Runtime on test images
    (precision_gate.py). The compressed graph comes first: the gate decides what it ships, and its int8
    format (measured on it) and recipe are kept for the dense reference, which is judged and recorded but
    not gated (it is what the report compares with, not what ships)."""
    out = {"fp32": {"file": fp32.name, "ships": True}}
    for precision in job.precisions:
        if precision == "fp32":
            continue
        if fp32.name == MODEL_ONNX:
            out[precision] = _lower_precision(run, fp32, precision, job)
            job.recipes[precision] = out[precision].get("recipe", "none") if out[precision]["ships"] else None
        elif job.recipes.get(precision, "none") is None:
            out[precision] = {"ships": False, "reason": f"left out with {MODEL_ONNX}"}
        else:
            out[precision] = _lower_precision(run, fp32, precision, job, (job.recipes.get(precision, "none"),))
    return out


def _lower_precision(run, fp32: Path, precision: str, job: "ExportJob", reference_recipes: tuple | None = None
                     ) -> dict:
    """Write `precision` by each recipe in turn until one passes the gate; none passing: no file.
    `reference_recipes`: the dense reference, written by the shipped graph's recipe and kept whatever
    the gate says (its verdict is recorded)."""
    path = precision_path(fp32, precision)
    attempts = []
    recipes = reference_recipes or (INT8_RECIPES if precision == "int8" else ("none",))
    for recipe in recipes:
        _write_precision(fp32, path, precision, recipe, job)
        agreement = compare_graphs(fp32, path, job.test)
        verdict = judge(precision, agreement, job.max_drop)
        attempts.append({"recipe": recipe, "vs_fp32": agreement.to_dict(), **verdict.to_dict()})
        how = f" [{RECIPE_TEXT[recipe]}]" if precision == "int8" else ""
        note = "" if verdict.ships or not reference_recipes else " (the dense reference: kept, not shipped)"
        job.reporter.line(f"{path.name}{how}: {verdict.reason}{note}")
        if verdict.ships or reference_recipes:
            run.record(path.name, precision=precision)
            return {"file": path.name, "ships": True, "vs_fp32": agreement.to_dict(), "attempts": attempts,
                    "within_tolerance": verdict.ships,
                    **({"recipe": recipe, "calib_images": len(job.calib), "format": job.int8.format,
                        "activations": job.int8.activations} if precision == "int8" else {})}
    path.unlink(missing_ok=True)
    return {"ships": False, "reason": verdict.reason, "attempts": attempts}


def _write_precision(fp32: Path, path: Path, precision: str, recipe: str, job: "ExportJob") -> None:
    if precision == "fp16":
        to_fp16(fp32, path)
    elif job.int8 is None:  # the first int8 graph of this export: its format is measured on the full recipe
        sample = nhwc_uint8(job.test, 0, min(64, len(job.test)))
        job.int8 = choose_int8_format(fp32, path, job.calibration(), sample, job.tensorrt)
        job.reporter.line(f"int8 format: {job.int8.format}, {job.int8.activations} activations ({job.int8.reason})")
    else:
        to_int8(fp32, path, ImageCalibrationReader(job.calibration()), job.int8.format, tensorrt=job.int8.tensorrt,
                keep_float=recipe)


def _leave_out(stage, results: dict, precisions: tuple[str, ...], reporter: Reporter) -> tuple[list[str], dict]:
    """The precisions the compressed graph ships, and why each other one was left out (the dense
    reference follows it: no file where the compressed graph has none)."""
    left_out = {}
    for precision in precisions:
        record = results[MODEL_ONNX]["precisions"].get(precision, {"ships": True})
        if record["ships"]:
            continue
        left_out[precision] = f"{MODEL_ONNX}: {record['reason']}"
        stage.discard(precision_path(Path(MODEL_ONNX), precision).name)
        stage.discard(precision_path(Path(DENSE_ONNX), precision).name)
        reporter.line(f"warning: {precision} left out of this run ({left_out[precision]}); fp32 ships. Pass "
                      "--max-precision-drop to accept a larger loss")
    return [p for p in precisions if p not in left_out], left_out


def _check_pattern(fp32: Path, precisions: tuple[str, ...], pattern: tuple[int, int], reporter: Reporter) -> dict:
    """The N:M pattern read back from the shipped files; int8 must keep every fp32 patterned layer."""
    n, m = pattern
    found = {}
    for precision in ["fp32", *(["int8"] if "int8" in precisions else [])]:  # fp32 is always written
        layers = weight_patterns(precision_path(fp32, precision), n, m)
        found[precision] = {"layers": len(layers), "nm_layers": sum(w.nm for w in layers),
                            "dense_layers": [w.node for w in layers if not w.nm]}
    if "int8" in found and found["int8"]["nm_layers"] < found["fp32"]["nm_layers"]:
        raise UserError(f"int8 quantisation broke the {n}:{m} pattern of some layers", "report this as a bug")
    reporter.line(f"{n}:{m} pattern in the shipped weights: " + ", ".join(
        f"{p} {v['nm_layers']}/{v['layers']} layers" for p, v in found.items()))
    return found


def _engines(run, precisions: tuple[str, ...], sparse: bool, require_trt: bool,
             reporter: Reporter) -> dict:
    """TensorRT engines for the compressed graph in each precision, where the machine can build them."""
    available = probe()
    if not available.usable:
        msg = f"TensorRT engine not built: {available.reason}"
        if require_trt:
            raise UserError(msg, "run export --trt on a machine with an NVIDIA GPU and TensorRT, or drop --require-trt")
        reporter.line(msg + "; the ONNX graphs above are written and verified")
        return {"built": False, "reason": available.reason}
    engines = {}
    for precision in precisions:
        onnx_path = precision_path(run.file(MODEL_ONNX), precision)
        engine_path = onnx_path.with_suffix(".engine")
        # the timing cache lives in the run itself (kept across exports), not in the staging folder
        info = build_engine(onnx_path, engine_path, run.run.file(TIMING_CACHE), sparse)
        run.record(engine_path.name, precision=precision)
        engines[precision] = info.to_dict()
        reporter.line(f"{engine_path.name}: TensorRT {info.tensorrt}, {info.layers} layers, "
                      f"{len(info.sparse_layers)} on sparse kernels, built in {info.build_seconds:.0f} s")
    return {"built": True, "tensorrt": available.tensorrt, "engines": engines}


RESIZE_PARITY_IMAGES = 64
RESIZE_PARITY_SCALE = (1.5, 1.25)  # the test images upsampled to another, non-square size


@torch.no_grad()
def resize_parity(onnx_path: Path, reference: PromptedNet, test, size: int, inputs) -> dict:
    """A graph with the Resize in front, fed test images of another size, vs the PyTorch reference
    pipeline (torchvision resize + centre crop, then the model) on the same images.

    The resize is not bit-exact (ONNX Runtime's and torchvision's antialias filters round differently),
    so this is measured and recorded, not required; tests/test_graph_resize.py bounds it.
    """
    import numpy as np
    import torchvision.transforms.v2.functional as TF

    from calibration.session import cpu_session, run as run_session
    from vpns_deploy.data.batches import to_unit_float

    images = torch.from_numpy(nhwc_uint8(test, 0, RESIZE_PARITY_IMAGES)).permute(0, 3, 1, 2)
    h, w = round(size * RESIZE_PARITY_SCALE[0]), round(size * RESIZE_PARITY_SCALE[1])
    big = TF.resize(images, [h, w], antialias=True)
    got = run_session(cpu_session(onnx_path), np.ascontiguousarray(big.permute(0, 2, 3, 1).numpy()))
    pixels = reference_resize(big, size, inputs.crop_pct, inputs.interpolation)
    want = reference.cpu().eval()(to_unit_float(pixels), prompted=reference.prompt is not None).numpy()
    front = _front_only(size, inputs, big)
    off = np.abs(front.astype(np.int32) - pixels.permute(0, 2, 3, 1).numpy().astype(np.int32))
    return {"images": len(big), "height": h, "width": w, "max_abs_diff": float(np.abs(got - want).max()),
            "top1_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
            "pixels_max_diff": int(off.max()), "pixels_mean_diff": float(off.mean()),
            "pixels_off_by_more_than_1": float((off > 1).mean())}


def _front_only(size: int, inputs, images: torch.Tensor):
    """The folded Resize front alone (an identity graph behind it), run on images: its uint8 output."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from calibration.session import cpu_session, run as run_session
    from export.resize_front import MIN_OPSET

    c = inputs.channels
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "front",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", size, size, c])],
                              [helper.make_tensor_value_info("out", TensorProto.UINT8, ["batch", size, size, c])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", MIN_OPSET)])
    model.ir_version = 10
    model = prepend_resize(model, size, inputs.crop_pct, inputs.interpolation)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "front.onnx"
        onnx.save(model, str(path))
        return run_session(cpu_session(path), np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy()))
