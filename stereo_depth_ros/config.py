"""The node's typed parameters and the project's one YAML config reader (the ROS 2 params-file layout).

Offers:
- `NodeConfig`: every parameter of `stereo_depth_node` with its default and a description (for ROS parameter
  descriptors: `parameter_descriptions()`), `NodeConfig.from_dict(values)` and `validate()`, which raises one
  `ConfigError` (a ValueError) naming the parameter and the problem.
- `load_params_file(path, node_name) -> dict`: the `ros__parameters` for `node_name` from a params file laid out as
  `<node_name>: {ros__parameters: {...}}`, merged over a `/**:` (any node) section when present; namespaced keys
  (`/ns/node_name`, `/**/node_name`) match too. The offline CLI reads config/distill.yaml with it as well.
- `estimator_options(config)`: the keyword options of `create_estimator` for the configured backend.
- `RUNTIME_PARAMETERS`: the parameters `ros2 param set` may change while the node runs (validated by the same
  `validate()`); every other parameter is read-only.

The sync/QoS names and defaults are stereo_image_proc's (queue_size 5, approximate_sync false,
approximate_sync_tolerance_seconds 0.0, use_system_default_qos false).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stereo_depth_ros.capture_policy import DEFAULT_CONFIDENT_AT

from stereo_depth_ros.file_search import FileSearchError, find_file
from stereo_depth_ros.inference.base import BACKENDS as _BACKEND_TABLE  # numpy only: the SGBM node runs without torch
from stereo_depth_ros.model_names import MODEL_NAMES as MODELS

BACKENDS = tuple(_BACKEND_TABLE)
PRECISIONS = ("fp32", "fp16", "bf16")
IMAGE_TRANSPORTS = ("raw", "compressed")  # image_transport's names; stereo_depth_ros/inputs/sources.py
ONNX_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# What users tune while watching RViz; the node applies a change from the next pair on.
RUNTIME_PARAMETERS = frozenset({"confidence_threshold", "iters", "publish_points", "publish_confidence"})


# Parameters every rclpy node owns (declared by rclpy itself): allowed in params files, not ours to check.
ROS_OWN_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
ROS_OWN_PREFIXES = ("qos_overrides.",)


def is_ros_own_parameter(name: str) -> bool:
    return name in ROS_OWN_PARAMETERS or name.startswith(ROS_OWN_PREFIXES)


class ConfigError(ValueError):
    """A parameter value or params file that the node cannot start with; the message names the parameter."""


def _param(default: Any, description: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"description": description})
    return field(default=default, metadata={"description": description})


@dataclass
class NodeConfig:
    """Parameters of stereo_depth_node (defaults = config/stereo.yaml)."""

    backend: str = _param("torch", "Estimator backend: torch | onnxruntime | opencv_sgbm (weight-free baseline)")
    model: str = _param("rt_igev", "Network for the torch backend: rt_igev (real-time student) | selective_igev")
    model_path: str = _param(
        "weights/sceneflow.pth",
        "Checkpoint (.pth, torch) or ONNX file (onnxruntime); a relative path is looked for in the working "
        "directory, the package's share folder and the checkout (and their weights/)")
    device: str = _param("auto", "torch device: auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    precision: str = _param("fp32", "Inference precision: fp32 | fp16 | bf16 (CPU always runs fp32)")
    iters: int = _param(0, "Refinement iterations of the network; 0 = the model's default (settable at run time)")
    latency_budget_ms: float = _param(
        0.0, "torch backend only: per-frame time budget; the iterations that fit (at most iters) run; 0 = off")
    max_disparity: int = _param(192, "Largest disparity searched, in working-resolution pixels")
    input_width: int = _param(0, "Working width the estimator runs at; 0 = camera resolution")
    input_height: int = _param(0, "Working height the estimator runs at; 0 = camera resolution")
    approximate_sync: bool = _param(False, "Pair left/right by nearest stamp instead of equal stamps")
    approximate_sync_tolerance_seconds: float = _param(
        0.0, "Largest left/right stamp difference for approximate sync; 0 = unbounded")
    queue_size: int = _param(5, "Images kept per input while waiting for the other side")
    image_transport: str = _param(
        "raw", "raw: sensor_msgs/Image | compressed: sensor_msgs/CompressedImage (JPEG, PNG) on <image>/compressed")
    rectify: bool = _param(
        False, "Subscribe to raw images (left/image_raw, right/image_raw) and rectify them here from camera_info")
    use_system_default_qos: bool = _param(
        False, "Subscribe with the middleware's default QoS (for a Fast DDS reader: best effort) instead of following "
               "the publishers (reliable from reliable drivers, best effort from best-effort ones)")
    publish_points: bool = _param(True, "Publish the coloured point cloud on points2 (settable at run time)")
    publish_confidence: bool = _param(
        True, "Publish the per-pixel confidence (0..1) on confidence (settable at run time)")
    confidence_threshold: float = _param(
        0.0, "Depth and points are NaN where confidence is below this (0 = keep every valid disparity; settable at "
             "run time)")
    onnx_providers: list = _param(
        list(ONNX_PROVIDERS),
        "onnxruntime execution providers in order of preference; unavailable ones are skipped")
    trt_fp16: bool = _param(
        False, "TensorRT provider: let TensorRT run any layer in float16; off = a strongly typed engine in the "
               "export's own precisions (for float16 use an fp16 export: it keeps its float32 islands)")
    trt_engine_cache_dir: str = _param(
        "", "TensorRT provider: folder of the cached engines (built on the first start with an export, reused "
            "after restarts; one subfolder per export file); '' = ~/.cache/stereo_depth_ros/trt_engines")
    trt_workspace_mb: int = _param(1024, "TensorRT provider: the engine builder's workspace in MiB")
    sgbm_block_size: int = _param(5, "opencv_sgbm matching block size (odd, 1..11)")
    diagnostics_period: float = _param(1.0, "Seconds between /diagnostics messages and throttled status logs")
    capture_dir: str = _param(
        "", "Hard-pair capture: folder the captured pairs are written to (dataset layout, for stereo-distill "
            "label); '' = capture off")
    capture_confidence_below: float = _param(
        0.0, "Capture a pair when its share of confident pixels (valid, with confidence >= confidence_threshold, "
             f"or >= {DEFAULT_CONFIDENT_AT} when that is 0) falls below this; 0 = off")
    capture_every_s: float = _param(0.0, "Also capture a pair when this many seconds passed since the last "
                                         "captured one; 0 = off")
    capture_max_pairs: int = _param(1000, "Stop capturing when capture_dir holds this many pairs; 0 = no limit")
    capture_max_megabytes: float = _param(
        1000.0, "Stop capturing before capture_dir's files would pass this many megabytes (10^6 bytes); 0 = no "
                "limit")

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "NodeConfig":
        """Config from parameter values (e.g. a params file's ros__parameters); unknown names are an error,
        except rclpy's own (use_sim_time, qos_overrides.*), which are skipped.

        Values are checked for type (ints accepted where floats are expected); call validate() for the rest.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if not is_ros_own_parameter(k)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")
        defaults = cls()
        kwargs = {}
        for name, value in values.items():
            kwargs[name] = _coerce(name, value, getattr(defaults, name))
        return cls(**kwargs)

    @classmethod
    def parameter_descriptions(cls) -> dict[str, str]:
        """name -> description, for ROS parameter descriptors."""
        return {f.name: f.metadata["description"] for f in dataclasses.fields(cls)}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, check_files: bool = True) -> "NodeConfig":
        """Raise ConfigError naming the first invalid parameter; returns self so calls can chain.

        check_files: also require model_path to exist for the torch and onnxruntime backends; a relative one is
        replaced by the file found (stereo_depth_ros.file_search).
        """
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"parameter {name}: unknown value {value!r}; expected one of {', '.join(allowed)}")

        choice("backend", BACKENDS)
        choice("model", MODELS)
        choice("precision", PRECISIONS)
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"parameter device: {device!r} is not auto, cpu, cuda or cuda:N")
        if self.iters < 0:
            raise ConfigError(f"parameter iters: must be >= 0 (0 = model default), got {self.iters}")
        if not (math.isfinite(self.latency_budget_ms) and self.latency_budget_ms >= 0.0):
            raise ConfigError(f"parameter latency_budget_ms: must be a finite number >= 0 (0 = off), got "
                              f"{self.latency_budget_ms}")
        if self.latency_budget_ms and self.backend != "torch":
            raise ConfigError(f"parameter latency_budget_ms: only the torch backend can fit its iterations to a "
                              f"budget; set it to 0 for backend {self.backend} (got {self.latency_budget_ms})")
        if self.max_disparity <= 0:
            raise ConfigError(f"parameter max_disparity: must be positive, got {self.max_disparity}")
        # The IGEV cost volume has max_disparity/4 planes that the 3D hourglass halves three times.
        if self.backend == "torch" and self.max_disparity % 32:
            raise ConfigError(f"parameter max_disparity: the torch networks need a multiple of 32, got "
                              f"{self.max_disparity}")
        if (self.input_width == 0) != (self.input_height == 0):
            raise ConfigError("parameters input_width/input_height: set both (working resolution) or neither (0)")
        for name in ("input_width", "input_height"):
            value = getattr(self, name)
            if value != 0 and value < 32:
                raise ConfigError(f"parameter {name}: {value} is too small; use 0 (camera size) or >= 32 px")
        if not (math.isfinite(self.approximate_sync_tolerance_seconds)
                and self.approximate_sync_tolerance_seconds >= 0.0):
            raise ConfigError("parameter approximate_sync_tolerance_seconds: must be a finite number >= 0, got "
                              f"{self.approximate_sync_tolerance_seconds}")
        choice("image_transport", IMAGE_TRANSPORTS)
        if self.queue_size < 1:
            raise ConfigError(f"parameter queue_size: must be >= 1, got {self.queue_size}")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ConfigError(f"parameter confidence_threshold: must be in 0..1, got {self.confidence_threshold}")
        if not self.onnx_providers or any(not isinstance(p, str) or not p for p in self.onnx_providers):
            raise ConfigError("parameter onnx_providers: must be a non-empty list of provider names, got "
                              f"{self.onnx_providers!r}")
        if not 1 <= self.trt_workspace_mb <= 1 << 20:
            raise ConfigError(f"parameter trt_workspace_mb: must be in 1..{1 << 20} MiB, got {self.trt_workspace_mb}")
        if self.trt_engine_cache_dir and Path(self.trt_engine_cache_dir).expanduser().is_file():
            raise ConfigError(f"parameter trt_engine_cache_dir: {self.trt_engine_cache_dir!r} is a file, not a folder")
        if not (1 <= self.sgbm_block_size <= 11 and self.sgbm_block_size % 2 == 1):
            raise ConfigError(f"parameter sgbm_block_size: must be odd in 1..11, got {self.sgbm_block_size}")
        if not (math.isfinite(self.diagnostics_period) and self.diagnostics_period > 0):
            raise ConfigError(f"parameter diagnostics_period: must be > 0 seconds, got {self.diagnostics_period}")
        self._validate_capture()
        if self.backend in ("torch", "onnxruntime"):
            if not self.model_path:
                raise ConfigError(f"parameter model_path: required for backend {self.backend}")
            if self.backend == "onnxruntime" and not self.model_path.endswith(".onnx"):
                raise ConfigError(f"parameter model_path: backend onnxruntime needs a .onnx file, got "
                                  f"{self.model_path!r}")
            if check_files:
                try:  # relative paths: working directory, installed share folder, checkout (file_search.py)
                    self.model_path = str(find_file(self.model_path, "model"))
                except FileSearchError as exc:
                    raise ConfigError(f"parameter model_path: file {exc}; see weights/README.md for the weights, "
                                      "or run the weight-free baseline with backend:=opencv_sgbm") from None
        return self


    def _validate_capture(self) -> None:
        if not 0.0 <= self.capture_confidence_below <= 1.0:
            raise ConfigError("parameter capture_confidence_below: must be in 0..1 (a share of pixels; 0 = off), "
                              f"got {self.capture_confidence_below}")
        for name in ("capture_every_s", "capture_max_megabytes"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"parameter {name}: must be a finite number >= 0 (0 = off), got {value}")
        if self.capture_max_pairs < 0:
            raise ConfigError(f"parameter capture_max_pairs: must be >= 0 (0 = no limit), got "
                              f"{self.capture_max_pairs}")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """value converted to the type of the parameter's default, or ConfigError."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, (list, tuple)):
            return list(value)
    raise ConfigError(f"parameter {name}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")


def estimator_options(config: NodeConfig) -> dict[str, Any]:
    """Keyword options of `create_estimator(config.backend, **options)`."""
    if config.backend == "torch":
        options: dict[str, Any] = {"model": config.model, "model_path": config.model_path, "device": config.device,
                                   "precision": config.precision, "iters": config.iters or None,
                                   "max_disparity": config.max_disparity}
        # Passed only when set, so that a torch backend without the budget keyword (before the GPU work lands)
        # still loads with the default configuration.
        if config.latency_budget_ms:
            options["latency_budget_ms"] = config.latency_budget_ms
        return options
    if config.backend == "onnxruntime":
        from stereo_depth_ros.inference.onnx_backend import TensorrtOptions

        return {"model_path": config.model_path, "providers": list(config.onnx_providers),
                "tensorrt": TensorrtOptions(fp16=config.trt_fp16, engine_cache_dir=config.trt_engine_cache_dir,
                                            workspace_mb=config.trt_workspace_mb)}
    return {"max_disparity": config.max_disparity, "block_size": config.sgbm_block_size}


def load_params_file(path: str | Path, node_name: str) -> dict[str, Any]:
    """ros__parameters for `node_name` from a ROS 2 params file (merged over a `/**` section).

    Raises ConfigError for a missing or unparsable file, a layout other than `<node>: {ros__parameters: {...}}`,
    or a file with no section for this node.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {str(path)!r} not found")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"params file {str(path)!r} must map node names to {{ros__parameters: ...}}")
    bare = node_name.rsplit("/", 1)[-1]
    wildcard, specific = None, None
    for key, section in document.items():
        key = str(key)
        if key in ("/**", "**"):
            wildcard = _ros_parameters(path, key, section)
        elif key.rsplit("/", 1)[-1] == bare and key.lstrip("/") in (bare, node_name.lstrip("/"), f"**/{bare}"):
            specific = _ros_parameters(path, key, section)
    if wildcard is None and specific is None:
        raise ConfigError(f"params file {str(path)!r} has no section for node {node_name!r} (nor /**); "
                          f"sections: {', '.join(map(str, document)) or 'none'}")
    merged = dict(wildcard or {})
    merged.update(specific or {})
    return merged


def _ros_parameters(path: Path, key: str, section: Any) -> dict[str, Any]:
    if not isinstance(section, dict) or "ros__parameters" not in section:
        raise ConfigError(f"params file {str(path)!r}: section {key!r} has no ros__parameters")
    params = section["ros__parameters"]
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"params file {str(path)!r}: {key}.ros__parameters must be a mapping")
    return _flatten(params)


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted names, as ROS 2 reads them."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
