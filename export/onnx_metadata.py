"""ONNX metadata_props that make a shipped graph self-describing: a model.onnx copied away from its
manifest.json still says what its outputs mean and what to feed it.

Keys (values are strings, as ONNX requires; JSON where structured):
  classes          JSON list: the class name of each output index, in order (absent where the graph's
                   output width is not the run's class count: the dense graph of a --head new run)
  input_contract   JSON: export's caller_contract (uint8 NHWC, shape, channel order, value range, resize)
  arch             the --arch the run was made with ("" for a pickled module)
  graph            which graph: "compressed" (model.onnx) or "dense reference" (dense.onnx)
  producer         "vpns-deploy <version>"
The fp16 and int8 siblings are derived from the stamped fp32 file; ONNX Runtime's fp16 converter and
quantiser carry metadata_props over (tests/test_export.py reads them back from every precision).
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx

JSON_KEYS = ("classes", "input_contract")


def graph_metadata(classes: list[str], contract: dict, arch: str | None, graph: str) -> dict[str, str]:
    """The metadata_props of one exported graph (classes: the run's, in label order)."""
    from vpns_deploy import __version__

    return {"classes": json.dumps(list(classes)), "input_contract": json.dumps(contract), "arch": arch or "",
            "graph": graph, "producer": f"vpns-deploy {__version__}"}


def _output_width(model: onnx.ModelProto) -> int | None:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return dims[1].dim_value or None if len(dims) == 2 else None


def stamp(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """model with props in its metadata_props (same keys replaced, others kept); `classes` is left out
    where the graph's output width differs from their number, so it never names the wrong outputs."""
    props = dict(props)
    if "classes" in props and _output_width(model) != len(json.loads(props["classes"])):
        del props["classes"]
    kept = {p.key: p.value for p in model.metadata_props if p.key != "classes"}
    onnx.helper.set_model_props(model, {**kept, **props})  # replaces the whole list
    return model


def read_metadata(path: Path) -> dict:
    """A graph's metadata_props, JSON keys decoded (what a caller without manifest.json reads)."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in props.items()}
