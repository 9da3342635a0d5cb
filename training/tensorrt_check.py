"""Would TensorRT build an engine from this ONNX file? `check_onnx` reads the graph and says what would stop
`trtexec` (blockers) and what it needs to be told (notes), with the trtexec command line to use.

The operator list is TensorRT's ONNX parser support matrix for TENSORRT_VERSION (onnx-tensorrt, docs/operators.md
of the 10.1-GA release): the supported operators with their supported types; operators it lists as unsupported,
or does not list, are blockers. Besides the list, the checks the IGEV family is known to trip over:
- GridSample with a 5-D input (TensorRT takes 4-D only);
- data-dependent control flow left in the graph (If, Loop, Scan: a traced assert or a shape-dependent branch);
- graph inputs without a static or named size (a named one needs an optimisation profile: a note with the flags);
- opset outside what the parser reads, and below the project's 17;
- `axes` of Reduce*/Slice/Squeeze/Pad that are not constants, Resize modes TensorRT lacks, DOUBLE tensors.
A newer TensorRT may accept more; an older one (JetPack 5's 8.5) less.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

TENSORRT_VERSION = "10.1"
PARSER_OPSETS = (9, 20)  # "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"
PROJECT_MIN_OPSET = 17

# type list -> operators with exactly that list (ai.onnx domain), transcribed from the support matrix
_SUPPORTED_BY_TYPES = {
    "FP32 FP16 BF16": (
        "Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv ConvTranspose Cos Cosh "
        "CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool "
        "GroupNormalization GRU HardSigmoid HardSwish Hardmax ImageScaler InstanceNormalization IsInf "
        "LayerNormalization LeakyRelu Log LogSoftmax LRN LSTM LpNormalization LpPool MatMul MaxPool "
        "MeanVarianceNormalization ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike "
        "RandomUniform RandomUniformLike Reciprocal Resize RNN Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax "
        "Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample"),
    "FP32 FP16 BF16 INT32 INT64": (
        "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less LessOrEqual Max Min Mod Mul "
        "Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
        "ReduceSum ReduceSumSquare Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK"),
    "FP32 FP16 BF16 INT32 INT64 BOOL": (
        "Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements GatherND Identity If Loop "
        "OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile Transpose Trilu Unsqueeze Where"),
    "FP32 FP16": "DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign",
    "BOOL": "And Not Or Xor",
    "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL": "Cast CastLike",
    "INT8 FP8 INT4": "DequantizeLinear",
    "FP32 FP16 BF16 INT8 INT32 INT64": "Gelu",
    "FP32 FP16 BF16 FP8 INT32 INT64": "Mean",
}
SUPPORTED: dict[str, frozenset[str]] = {
    op: frozenset(types.split()) for types, ops in _SUPPORTED_BY_TYPES.items() for op in ops.split()
}
CONTROL_FLOW = ("If", "Loop", "Scan")
# Operators whose `axes` input "must be an initializer" (index of that input)
AXES_INPUT = {**{op: 1 for op in SUPPORTED if op.startswith("Reduce")}, "Squeeze": 1, "Slice": 3, "Pad": 3}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}


@dataclass
class TensorrtReport:
    """blockers: what stops trtexec; notes: what it must be told or may do differently; trtexec: the command."""

    tensorrt: str
    blockers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    operators: dict[str, int] = field(default_factory=dict)
    trtexec: str = ""

    @property
    def ok(self) -> bool:
        return not self.blockers

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        head = (f"tensorrt check (TensorRT {self.tensorrt} operator list): "
                + ("no blocker" if self.ok else f"{len(self.blockers)} blocker(s) for trtexec")
                + f"; {len(self.operators)} operator types, {sum(self.operators.values())} nodes")
        return ([head] + [f"  blocker: {b}" for b in self.blockers] + [f"  note: {n}" for n in self.notes]
                + [f"  build: {self.trtexec}"])


_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
               16: "BF16", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4"}


def check_onnx(path: str | os.PathLike, opt_size: tuple[int, int] | None = None) -> TensorrtReport:
    """The report for the ONNX file at `path`. opt_size: (height, width) to suggest as the optimisation profile's
    preferred size when the inputs are dynamic (e.g. the export's tracing size)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    graph = shape_inference.infer_shapes(model).graph
    report = TensorrtReport(tensorrt=TENSORRT_VERSION)
    report.operators = dict(sorted(Counter(node.op_type for node in graph.node).items()))
    _check_opset(model, report)
    types, ranks = _tensor_types_and_ranks(graph)
    constants = {init.name for init in graph.initializer} | {
        node.output[0] for node in graph.node if node.op_type == "Constant"}
    problems: Counter[str] = Counter()
    for node in graph.node:
        for problem in _node_problems(node, types, ranks, constants):
            problems[problem] += 1
    report.blockers += [f"{problem} ({count} node{'s' if count > 1 else ''})" for problem, count in problems.items()]
    if any(t == "DOUBLE" for t in types.values()):
        report.notes.append("DOUBLE tensors: TensorRT casts them to float32, clamping to +-FLT_MAX")
    shapes = _check_inputs(graph, model, report)
    report.trtexec = _trtexec_command(Path(path), model, shapes, opt_size)
    return report


def _check_opset(model, report: TensorrtReport) -> None:
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    low, high = PARSER_OPSETS
    if version is None or not low <= version <= high:
        report.blockers.append(f"opset {version}: TensorRT {TENSORRT_VERSION}'s parser reads opsets {low} to {high}")
    elif version < PROJECT_MIN_OPSET:
        report.blockers.append(f"opset {version}: this project exports opset >= {PROJECT_MIN_OPSET} (GridSample)")
    for domain in opsets.keys() - {"ai.onnx"}:
        report.blockers.append(f"operator domain {domain!r}: TensorRT needs a plugin for it")


def _tensor_types_and_ranks(graph) -> tuple[dict[str, str], dict[str, int]]:
    types: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        tensor = value.type.tensor_type
        types[value.name] = _TYPE_NAMES.get(tensor.elem_type, str(tensor.elem_type))
        if tensor.HasField("shape"):
            ranks[value.name] = len(tensor.shape.dim)
    for init in graph.initializer:
        types[init.name] = _TYPE_NAMES.get(init.data_type, str(init.data_type))
        ranks[init.name] = len(init.dims)
    return types, ranks


def _node_problems(node, types: dict[str, str], ranks: dict[str, int], constants: set[str]) -> list[str]:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return [f"{node.domain}.{op} is not an ONNX operator TensorRT parses (it needs a plugin)"]
    if op not in SUPPORTED:
        return [f"{op} is not supported by TensorRT {TENSORRT_VERSION}"]
    problems = []
    if op in CONTROL_FLOW:
        problems.append(f"{op}: data-dependent control flow (a traced assert or a shape-dependent branch); "
                        "export without it")
    data_type = types.get(node.input[0]) if node.input and node.input[0] else None
    if data_type is not None and data_type != "DOUBLE" and data_type not in SUPPORTED[op]:
        problems.append(f"{op} on {data_type} tensors (TensorRT takes {', '.join(sorted(SUPPORTED[op]))})")
    if op == "GridSample" and ranks.get(node.input[0], 4) != 4:
        problems.append(f"GridSample on a {ranks[node.input[0]]}-D input (TensorRT takes 4-D only)")
    axes = AXES_INPUT.get(op)
    if axes is not None and len(node.input) > axes and node.input[axes] and node.input[axes] not in constants:
        problems.append(f"{op} with computed axes (TensorRT needs them constant)")
    if op == "Resize":
        attrs = {a.name: (a.s.decode() if a.type == a.STRING else a.i) for a in node.attribute}
        if attrs.get("coordinate_transformation_mode", "half_pixel") not in RESIZE_COORDINATES:
            problems.append(f"Resize with coordinate_transformation_mode {attrs['coordinate_transformation_mode']}")
        if attrs.get("mode", "nearest") not in RESIZE_MODES:
            problems.append(f"Resize with mode {attrs['mode']}")
        if attrs.get("antialias", 0):
            problems.append("Resize with antialias")
    return problems


def _check_inputs(graph, model, report: TensorrtReport) -> dict[str, list]:
    """Each graph input's dims (ints, or names for dynamic ones); blockers for dims with neither."""
    meta = {p.key: p.value for p in model.metadata_props}
    shapes: dict[str, list] = {}
    dynamic = []
    for value in graph.input:
        dims: list = []
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
                dynamic.append(f"{value.name}[{len(dims) - 1}]={dim.dim_param}")
            else:
                report.blockers.append(f"input {value.name} has a dimension with no size and no name")
                dims.append("?")
        shapes[value.name] = dims
    if dynamic:
        low = (meta.get("stereo_depth_ros.min_height", "32"), meta.get("stereo_depth_ros.min_width", "32"))
        report.notes.append(f"dynamic input size ({', '.join(dynamic)}): TensorRT needs an optimisation profile "
                            f"(min/opt/max shapes; the export takes sizes from {low[1]}x{low[0]}); an engine runs only "
                            "sizes inside its profile, and a fixed-size export builds the fastest engine")
    return shapes


def _trtexec_command(path: Path, model, shapes: dict[str, list], opt_size: tuple[int, int] | None) -> str:
    meta = {p.key: p.value for p in model.metadata_props}
    command = f"trtexec --onnx={path.name} --saveEngine={path.stem}.engine"
    if meta.get("stereo_depth_ros.precision") == "fp16":
        # Strong typing keeps the export's own precisions (its float32 islands); the fp16 flag would let TensorRT
        # move any layer to float16.
        command += " --stronglyTyped"
    if any(isinstance(d, str) for dims in shapes.values() for d in dims):
        low_h = meta.get("stereo_depth_ros.min_height", "32")
        low_w = meta.get("stereo_depth_ros.min_width", "32")
        opt_h, opt_w = opt_size or (480, 640)

        def profile(h: object, w: object) -> str:
            return ",".join(f"{name}:1x3x{h}x{w}" for name in shapes)

        command += (f" --minShapes={profile(low_h, low_w)} --optShapes={profile(opt_h, opt_w)}"
                    f" --maxShapes={profile(opt_h, opt_w)}  # raise maxShapes to the largest image you will feed")
    return command


__all__ = ["SUPPORTED", "TENSORRT_VERSION", "TensorrtReport", "check_onnx"]
