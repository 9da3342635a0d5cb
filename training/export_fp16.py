"""What the fp16 export needs beyond the fp32 one: float32 Range nodes, and how close to float16's range it runs.

The network itself keeps its float32 islands with float16 weights (stereo_depth_ros/models/base.py: the
correlation volume's accumulation, geometry lookup, softmaxes, regression, upsampling); here are the two steps on
the exported file and on the reference network that `stereo-distill export --precision fp16` adds.
"""
from __future__ import annotations

from pathlib import Path


def fix_float16_ranges(path: Path) -> int:
    """ONNX Range has no float16 kernel type: run float16 Ranges in float32 between two Casts. Returns the count.

    The network builds its plane/column/tap index vectors with arange in the compute dtype, which the exporter
    writes as a float16 Range when the weights are float16.
    """
    import onnx
    from onnx import TensorProto, helper, shape_inference

    graph_model = onnx.load(str(path))
    inferred = shape_inference.infer_shapes(graph_model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    nodes, fixed = [], 0
    for node in graph_model.graph.node:
        if node.op_type == "Range" and any(types.get(i) == TensorProto.FLOAT16 for i in node.input):
            cast_inputs = []
            for i, name in enumerate(node.input):
                cast_name = f"{node.name}_in{i}_f32"
                nodes.append(helper.make_node("Cast", [name], [cast_name], to=TensorProto.FLOAT,
                                              name=f"{node.name}_cast_in{i}"))
                cast_inputs.append(cast_name)
            out32 = f"{node.output[0]}_f32"
            nodes.append(helper.make_node("Range", cast_inputs, [out32], name=node.name))
            nodes.append(helper.make_node("Cast", [out32], [node.output[0]], to=TensorProto.FLOAT16,
                                          name=f"{node.name}_cast_out"))
            fixed += 1
        else:
            nodes.append(node)
    if fixed:
        del graph_model.graph.node[:]
        graph_model.graph.node.extend(nodes)
        onnx.save(graph_model, str(path))
    return fixed


def float16_headroom(reference, height: int, width: int) -> dict[str, float]:
    """Largest magnitudes of the float32 network on the Motorcycle pair at the export size where a float16
    network could overflow: the correlation's terms (bounded by the product of the largest left and right
    matching features), the aggregated cost volume and its logits. The fp16 export accumulates the correlation in
    float32 (models/base.py); the other two run in float16."""
    import torch

    from stereo_devkit.motorcycle import motorcycle_pair

    from .export import _chw, _export_module

    peaks: dict[str, list[float]] = {"desc": [], "cost_agg": [], "classifier": []}
    hooks = [getattr(reference, name).register_forward_hook(
        lambda _m, _i, output, name=name: peaks[name].append(float(output.abs().max())))
        for name in peaks]
    try:
        left, right = (torch.from_numpy(_chw(image)) for image in motorcycle_pair(height, width))
        with torch.no_grad():
            _export_module(reference, 1, torch.float32)(left, right)
    finally:
        for hook in hooks:
            hook.remove()
    return {"correlation_term_bound": peaks["desc"][0] * peaks["desc"][1], "cost_volume": max(peaks["cost_agg"]),
            "volume_logits": max(peaks["classifier"])}
