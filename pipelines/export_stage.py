"""Stage `export`: deployment ONNX (prompt folded in) plus the dense reference, both parity-checked."""
from __future__ import annotations

from pathlib import Path

import torch

from calibration.feeds import nhwc_uint8
from calibration.parity import check_parity, require_parity
from export.deploy_graph import DeployGraph
from export.onnx_export import export_onnx
from pipelines.load_run import load_run
from pipelines.run_dir import now
from vpns_deploy.progress import Reporter
from vpns_deploy.prompts import PromptedNet

MODEL_ONNX, DENSE_ONNX = "model.onnx", "dense.onnx"


def run_export(run_dir: Path, with_prompt: bool = True, data_spec: str | None = None,
               reporter: Reporter | None = None) -> dict:
    reporter = reporter or Reporter()
    loaded = load_run(run_dir)
    run = loaded.run
    test = loaded.test_split(data_spec)
    example = torch.from_numpy(nhwc_uint8(test, 0, 2))
    ships_prompt = with_prompt and loaded.prompt is not None
    results = {}
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
    if with_prompt and loaded.prompt is None:
        reporter.line(f"note: this run ({run.manifest['config']['method']}) learned no prompt; none to fold in")
    run.manifest["export"] = {"created": now(), "ships_prompt": ships_prompt, "graphs": results}
    run.save()
    return run.manifest["export"]
