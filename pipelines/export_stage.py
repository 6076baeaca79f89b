"""Stage `export`: deployment ONNX (prompt folded in) plus the dense reference, both parity-checked."""
from __future__ import annotations

from pathlib import Path

import torch

from calibration.feeds import nhwc_uint8
from calibration.calibrator import DEFAULT_CALIB_IMAGES, ImageCalibrationReader, calibration_images
from calibration.parity import check_parity, compare_graphs, require_parity
from export.deploy_graph import DeployGraph
from export.onnx_export import export_onnx
from export.precision import PRECISIONS, precision_path, to_fp16, to_int8
from export.sparsity_check import weight_patterns
from export.tensorrt_engine import build_engine, probe
from pipelines.load_run import load_run
from pipelines.run_dir import now
from vpns_deploy.errors import UserError
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet

MODEL_ONNX, DENSE_ONNX = "model.onnx", "dense.onnx"
TIMING_CACHE = "trt_timing.cache"
FP16_MIN_AGREEMENT = 0.99  # below this fp16 is not rounding noise but overflow: refuse to ship it


def run_export(run_dir: Path, with_prompt: bool = True, data_spec: str | None = None,
               reporter: Reporter | None = None, precisions: tuple[str, ...] = ("fp32",),
               calib_images: int = DEFAULT_CALIB_IMAGES, trt: bool = False, require_trt: bool = False) -> dict:
    reporter = reporter or Reporter()
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise UserError(f"unknown precision {bad[0]!r}", f"pass --precision as a list of {', '.join(PRECISIONS)}")
    if calib_images < 1:
        raise UserError(f"--calib-images must be >= 1, got {calib_images}", "e.g. --calib-images 512")
    loaded = load_run(run_dir)
    run = loaded.run
    test = loaded.test_split(data_spec)
    example = torch.from_numpy(nhwc_uint8(test, 0, 2))
    ships_prompt = with_prompt and loaded.prompt is not None
    results = {}
    calib = None
    jobs = [
        (MODEL_ONNX, loaded.compressed, loaded.prompt if ships_prompt else None),
        (DENSE_ONNX, loaded.dense, None),
    ]
    for name, net, prompt in jobs:
        reference = PromptedNet(net, loaded.inputs, prompt)
        parity = {}

        def verify(tmp: Path, reference=reference, parity=parity, name=name) -> None:
            parity["result"] = check_parity(tmp, reference, test, prompted=prompt is not None)
            require_parity(parity["result"], name)

        info = export_onnx(DeployGraph(net, loaded.inputs, prompt), example, run.file(name), verify=verify)
        run.record(name)
        p = parity["result"]
        results[name] = {
            "prompt_folded": prompt is not None,
            "opset": info.opset, "ir_version": info.ir_version,
            "input": {"name": info.input_name, "type": info.input_type, "shape": info.input_shape, "layout": "NHWC"},
            "output_shape": info.output_shape, "ops": info.ops,
            "parity": p.to_dict(),
        }
        reporter.line(
            f"{name}: uint8 NHWC {info.input_shape} -> {info.output_shape}, "
            f"{'prompt folded in' if prompt is not None else 'no prompt'}; ORT vs PyTorch on {p.images} test "
            f"images: max |diff| {p.max_abs_diff:.1e}, top-1 agreement {p.top1_agreement:.2%}"
        )
        if "int8" in precisions and calib is None:  # one calibration set for both graphs
            calib = calibration_images(loaded.train_split(data_spec), calib_images, int(run.manifest["seed"]))
        results[name]["precisions"] = _derive(run, run.file(name), precisions, test, calib, reporter)
    if with_prompt and loaded.prompt is None:
        reporter.line(f"note: this run ({run.manifest['config']['method']}) learned no prompt; none to fold in")
    pattern = run.manifest.get("metrics", {}).get("structure", {}).get("pattern")
    if pattern:
        results[MODEL_ONNX]["nm_pattern"] = _check_pattern(run.file(MODEL_ONNX), precisions, tuple(pattern), reporter)
    engines = _engines(run, precisions, pattern is not None, require_trt, reporter) if trt else None
    run.manifest["export"] = {"created": now(), "ships_prompt": ships_prompt, "graphs": results,
                              "precisions": list(precisions), "calib_images": calib_images, "tensorrt": engines}
    run.save()
    return run.manifest["export"]


def _derive(run, fp32: Path, precisions: tuple[str, ...], test, calib, reporter: Reporter) -> dict:
    """fp16 / int8 siblings of a verified fp32 graph, each compared with it in ONNX Runtime.

    `calib`: the INT8 calibration images (None when int8 is not asked for).
    """
    out = {"fp32": {"file": fp32.name}}
    for precision in precisions:
        if precision == "fp32":
            continue
        path = precision_path(fp32, precision)
        if precision == "fp16":
            to_fp16(fp32, path)
        else:
            to_int8(fp32, path, ImageCalibrationReader(calib))
        agreement = compare_graphs(fp32, path, test)
        if precision == "fp16" and agreement.top1_agreement < FP16_MIN_AGREEMENT:
            path.unlink()
            raise UserError(
                f"{path.name}: fp16 changes the top-1 class on {1 - agreement.top1_agreement:.2%} of test images "
                f"(max |logit diff| {agreement.max_abs_diff:.2e}): the model overflows or underflows in fp16",
                "ship fp32 or int8 for this model",
            )
        run.record(path.name, precision=precision)
        out[precision] = {"file": path.name, "vs_fp32": agreement.to_dict(),
                          **({"calib_images": len(calib)} if precision == "int8" else {})}
        reporter.line(f"{path.name}: top-1 agreement with fp32 {agreement.top1_agreement:.2%} on "
                      f"{agreement.images} test images, max |logit diff| {agreement.max_abs_diff:.2e}")
    return out


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
        info = build_engine(onnx_path, engine_path, run.file(TIMING_CACHE), sparse)
        run.record(engine_path.name, precision=precision)
        engines[precision] = info.to_dict()
        reporter.line(f"{engine_path.name}: TensorRT {info.tensorrt}, {info.layers} layers, "
                      f"{len(info.sparse_layers)} on sparse kernels, built in {info.build_seconds:.0f} s")
    return {"built": True, "tensorrt": available.tensorrt, "engines": engines}
