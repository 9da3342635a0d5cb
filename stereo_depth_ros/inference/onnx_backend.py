"""onnxruntime: an exported student (`stereo-distill export`) behind the estimator interface.

`OnnxEstimator(model_path, providers=None)` opens the file on the first of the preferred execution providers
(default TensorRT, CUDA, CPU; configurable) that can run on this machine, reads the export's metadata
(`stereo_depth_ros.padded_inside`, `.iters`, `.model`, and the size limits `.min_height`, `.min_width`,
`.size_divisor`) and, when the graph does not pad to a multiple of 32 itself, pads (edge replication, split over
both sides like the PyTorch model) and crops here. Graph contract: inputs "left", "right" float32 [1, 3, H, W]
RGB 0..255; outputs "disparity" [1, 1, H, W] and optionally "confidence" [1, 1, H, W].

Providers: onnxruntime-gpu lists CUDA and TensorRT as available whether or not their libraries and a GPU are
there, and a session asked for them then prints an "EP Error" block and falls back. So only providers that can
load are requested: CUDA/TensorRT need a GPU the CUDA driver reports and their provider library loadable (which
fails without CUDA, cuDNN or TensorRT). The provider in use is logged once, when the session opens.

TensorRT (`TensorrtOptions`, the node's trt_* parameters): engines are cached on disk, so only the first start
with an export builds one (minutes on a Jetson); each export gets its own subfolder of the cache, named after the
file's sha256, so a file re-exported to the same path never runs a stale engine.

Image sizes: an export states what it takes (fixed size, smallest size); images outside that raise
`OnnxInputSizeError` before onnxruntime runs, naming the limits, so that each caller can add its own advice.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stereo_depth_ros.inference.base import StereoEstimate, StereoEstimator
from stereo_depth_ros.pad_split import MIN_SIDE, PAD_DIVISOR, pad_lrtb

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
META_PREFIX = "stereo_depth_ros."
# Provider -> its library in onnxruntime/capi; loading it needs CUDA (and cuDNN, or TensorRT) on the loader path.
GPU_PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}

log = logging.getLogger(__name__)


class OnnxInputSizeError(ValueError):
    """Images of a size the ONNX export cannot take. The message names the limits and says nothing about how to
    change the size: the node (input_width/input_height) and `stereo-distill eval` each add their own advice.

    image_size, fixed_size, min_size: (height, width); fixed_size is None for a dynamic export; divisor: what the
    graph's input sides must be a multiple of (1 when the graph pads itself).
    """

    def __init__(self, message: str, image_size: tuple[int, int], limits: ExportLimits) -> None:
        super().__init__(message)
        self.image_size = image_size
        self.fixed_size = limits.fixed_size
        self.min_size = limits.min_size
        self.divisor = limits.divisor


@dataclass(frozen=True)
class ExportLimits:
    """What input an export takes, from its graph and metadata. Sizes are (height, width).

    fixed_size: the graph's input size, None for a dynamic graph; min_size: the smallest image; divisor: the
    graph's own stride requirement (1 when it pads inside, else 32 and the backend pads); padded_inside.
    """

    fixed_size: tuple[int, int] | None
    min_size: tuple[int, int]
    divisor: int
    padded_inside: bool

    @classmethod
    def from_graph(cls, input_shape: list[Any] | tuple[Any, ...], meta: dict[str, str]) -> ExportLimits:
        """From the "left" input's shape ([1, 3, H, W]; symbolic sides are names or None) and metadata_props."""
        sides = tuple(input_shape[2:4])
        fixed = (int(sides[0]), int(sides[1])) if all(isinstance(s, int) and s > 0 for s in sides) else None
        padded_inside = meta.get(META_PREFIX + "padded_inside", "0") == "1"
        divisor = int(meta.get(META_PREFIX + "size_divisor", "1" if padded_inside else str(PAD_DIVISOR)))
        min_h = int(meta.get(META_PREFIX + "min_height", MIN_SIDE))
        min_w = int(meta.get(META_PREFIX + "min_width", MIN_SIDE))
        # Exports made before the limits were recorded say e.g. "dynamic, width >= 192" (their traced cost volume
        # broke at narrower widths).
        legacy = re.search(r"width >= (\d+)", meta.get(META_PREFIX + "input_size", ""))
        if legacy and META_PREFIX + "min_width" not in meta:
            min_w = max(min_w, int(legacy.group(1)))
        if fixed is not None and padded_inside:
            min_h, min_w = fixed
        return cls(fixed_size=fixed, min_size=(max(min_h, 1), max(min_w, 1)), divisor=max(divisor, 1),
                   padded_inside=padded_inside)

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding the backend adds before the graph (none when it pads inside)."""
        return (0, 0, 0, 0) if self.padded_inside else pad_lrtb(height, width, PAD_DIVISOR)

    def check(self, height: int, width: int, source: str = "the ONNX export") -> None:
        """Raise OnnxInputSizeError when images of height x width cannot run."""
        min_h, min_w = self.min_size
        if self.fixed_size is not None:
            left, right, top, bottom = self.pads(height, width)
            if (height + top + bottom, width + left + right) != self.fixed_size:
                fixed_h, fixed_w = self.fixed_size
                how = ("images only (fixed size)" if self.padded_inside
                       else f"input (images are padded to a multiple of {PAD_DIVISOR} to fit it)")
                raise OnnxInputSizeError(f"{source} was exported for {fixed_w}x{fixed_h} {how}; the images are "
                                         f"{width}x{height}", (height, width), self)
        if height < min_h or width < min_w:
            raise OnnxInputSizeError(f"{source} needs images of at least {min_w}x{min_h}; the images are "
                                     f"{width}x{height}", (height, width), self)
        fed_h, fed_w = (height, width) if self.padded_inside else (height + (-height % PAD_DIVISOR),
                                                                   width + (-width % PAD_DIVISOR))
        if fed_h % self.divisor or fed_w % self.divisor:
            raise OnnxInputSizeError(f"{source} needs image sides that are multiples of {self.divisor}; the images "
                                     f"are {width}x{height}", (height, width), self)


def read_export_limits(path: str | os.PathLike) -> ExportLimits:
    """The limits of an export file without opening an inference session (needs the `onnx` package)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in graph.metadata_props}
    left = next(i for i in graph.graph.input if i.name == "left")
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in left.type.tensor_type.shape.dim]
    return ExportLimits.from_graph(shape, meta)


def read_export_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `stereo_depth_ros.*` metadata of an export, without the prefix (needs the `onnx` package)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return {p.key[len(META_PREFIX):]: p.value for p in graph.metadata_props if p.key.startswith(META_PREFIX)}


def select_providers(preferred: list[str] | tuple[str, ...] | None, available: list[str],
                     unusable: dict[str, str] | None = None) -> list[str]:
    """The preferred providers that this onnxruntime build offers and that can run here, in preference order.

    unusable: provider -> why it cannot run on this machine (see `unusable_providers`). Raises ValueError naming
    the lists (and the reasons) when none is left, or when a name is not a provider at all.
    """
    preferred = list(preferred or DEFAULT_PROVIDERS)
    unusable = unusable or {}
    unknown = [p for p in preferred if not p.endswith("ExecutionProvider")]
    if unknown:
        raise ValueError(f"unknown onnxruntime provider name(s) {unknown}; names end in 'ExecutionProvider', "
                         f"e.g. {list(DEFAULT_PROVIDERS)}")
    chosen = [p for p in preferred if p in available and p not in unusable]
    if not chosen:
        why = "; ".join(f"{p}: {unusable[p]}" for p in preferred if p in unusable)
        raise ValueError(f"none of the onnxruntime providers {preferred} can run here; this build offers "
                         f"{available}" + (f" ({why})" if why else ""))
    return chosen


def _cuda_device_count() -> tuple[int, str]:
    """GPUs the CUDA driver reports, asked through the driver API (no torch); with the reason when none."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA driver (libcuda.so.1 cannot be loaded)"
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return 0, "the CUDA driver reports no usable GPU"
    return count.value, ""


def unusable_providers(candidates: list[str] | tuple[str, ...], ort: Any) -> dict[str, str]:
    """provider -> why it cannot run on this machine, for the GPU providers among `candidates`."""
    gpu = [p for p in candidates if p in GPU_PROVIDER_LIBRARIES]
    if not gpu:
        return {}
    count, reason = _cuda_device_count()
    if not count:
        return {p: reason for p in gpu}
    if hasattr(ort, "preload_dlls"):
        # CUDA and cuDNN from pip's nvidia-* wheels (as torch installs them) are not on the loader's path by
        # themselves; onnxruntime's own helper loads them so that its provider libraries find them.
        with contextlib.suppress(Exception):
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    capi = Path(ort.__file__).parent / "capi"
    reasons = {}
    for provider in gpu:
        library = capi / GPU_PROVIDER_LIBRARIES[provider]
        try:
            ctypes.CDLL(str(library))
        except OSError as exc:
            reasons[provider] = f"{library.name} cannot be loaded ({str(exc).split(': ')[-1]})"
    return reasons


def default_engine_cache_dir() -> Path:
    """$XDG_CACHE_HOME/stereo_depth_ros/trt_engines, else ~/.cache/stereo_depth_ros/trt_engines."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stereo_depth_ros" / "trt_engines"


@dataclass(frozen=True)
class TensorrtOptions:
    """What the TensorRT provider is told (node parameters trt_fp16, trt_engine_cache_dir, trt_workspace_mb).

    fp16: TensorRT may run any layer in float16 (trt_fp16_enable). Off, onnxruntime builds a strongly typed
    network: an fp32 export runs in float32 and an fp16 export (`stereo-distill export --precision fp16`) in its
    own precisions, float32 islands included; that is the float16 route this project recommends.
    engine_cache_dir: root of the engine cache ('' = default_engine_cache_dir(); '~' is expanded). Engines go to
    <root>/<sha256 of the export, 16 hex digits>/, the timing cache (which speeds up later builds) to <root>.
    workspace_mb: the builder's workspace (trt_max_workspace_size), MiB.
    """

    fp16: bool = False
    engine_cache_dir: str = ""
    workspace_mb: int = 1024

    def cache_root(self) -> Path:
        return Path(self.engine_cache_dir).expanduser() if self.engine_cache_dir else default_engine_cache_dir()

    def engine_dir(self, model_path: str | os.PathLike) -> Path:
        digest = hashlib.sha256()
        with open(model_path, "rb") as handle:  # (hashlib.file_digest is Python 3.11+; JetPack 6 has 3.10)
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return self.cache_root() / digest.hexdigest()[:16]

    def provider_options(self, model_path: str | os.PathLike) -> dict[str, str]:
        """onnxruntime's TensorrtExecutionProvider options (strings; booleans as "0"/"1", which every version
        parses)."""
        return {
            "trt_fp16_enable": "1" if self.fp16 else "0",
            "trt_max_workspace_size": str(self.workspace_mb * 2**20),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(self.engine_dir(model_path)),
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": str(self.cache_root()),
        }


def make_folders(path: Path) -> None:
    """Create `path` and missing parents as 0755 (less the umask), like any folder a user makes."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o755, exist_ok=True)


class OnnxEstimator(StereoEstimator):
    """One onnxruntime session. `providers`: the providers the session runs on; `limits`: what input it takes."""

    name = "onnxruntime"
    iters_fixed = True  # the export fixes the iteration count; another value is refused (base class)

    def __init__(self, model_path: str, providers: list[str] | tuple[str, ...] | None = None,
                 intra_op_threads: int = 0, tensorrt: TensorrtOptions | None = None) -> None:
        import onnxruntime as ort

        if not model_path or not Path(model_path).is_file():
            raise FileNotFoundError(f"ONNX model {model_path!r} not found")
        self.model_path = str(model_path)
        available = ort.get_available_providers()
        skipped = unusable_providers([p for p in (providers or DEFAULT_PROVIDERS) if p in available], ort)
        chosen = select_providers(providers, available, skipped)
        provider_options: list[dict[str, str]] = [{} for _ in chosen]
        if "TensorrtExecutionProvider" in chosen:
            trt_options = (tensorrt or TensorrtOptions()).provider_options(self.model_path)
            try:
                make_folders(Path(trt_options["trt_engine_cache_path"]))
            except OSError as exc:
                raise ValueError(f"TensorRT engine cache {trt_options['trt_engine_cache_path']}: {exc.strerror}; "
                                 "set trt_engine_cache_dir to a writable folder") from None
            provider_options[chosen.index("TensorrtExecutionProvider")] = trt_options
            log.info("TensorRT engines of %s are cached in %s (the first start builds one: minutes on a Jetson)",
                     Path(self.model_path).name, trt_options["trt_engine_cache_path"])
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: graph-optimisation chatter is not the user's concern
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(
                self.model_path, sess_options=options, providers=list(zip(chosen, provider_options, strict=True)))
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt or foreign files
            raise ValueError(f"cannot load ONNX model {model_path!r}: {exc}") from None
        self.providers = self.session.get_providers()
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {"left", "right"} or "disparity" not in outputs:
            raise ValueError(f"ONNX model {model_path!r} has inputs {sorted(inputs)} and outputs {outputs}; "
                             "expected inputs left, right and output disparity (see stereo-distill export)")
        self._outputs = ["disparity"] + (["confidence"] if "confidence" in outputs else [])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.limits = ExportLimits.from_graph(inputs["left"].shape, meta)
        self.fixed_size = self.limits.fixed_size
        self.padded_inside = self.limits.padded_inside
        # The export's iteration count; the base class refuses any other value later (iters_fixed).
        self.iters = int(meta[META_PREFIX + "iters"]) if META_PREFIX + "iters" in meta else None
        self.model_name = meta.get(META_PREFIX + "model")
        by_reason: dict[str, list[str]] = {}
        for provider, why in skipped.items():
            by_reason.setdefault(why, []).append(provider)
        log.info("onnxruntime runs %s on %s%s", Path(self.model_path).name, self.providers[0],
                 "".join(f"; {', '.join(names)} skipped: {why}" for why, names in by_reason.items()))

    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        if left.shape != right.shape or left.ndim != 3 or left.shape[2] != 3:
            raise ValueError(f"expected two RGB images [H, W, 3] of one shape, got {left.shape} and {right.shape}")
        height, width = left.shape[:2]
        self.limits.check(height, width, f"the ONNX export {Path(self.model_path).name}")
        lpad, rpad, top, bottom = self.limits.pads(height, width)

        def prepare(image: np.ndarray) -> np.ndarray:
            chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)[None]
            if top or bottom or lpad or rpad:
                chw = np.pad(chw, ((0, 0), (0, 0), (top, bottom), (lpad, rpad)), mode="edge")
            return chw

        results = self.session.run(self._outputs, {"left": prepare(left), "right": prepare(right)})
        crop = (0, 0, slice(top, top + height), slice(lpad, lpad + width))
        disparity = np.array(results[0][crop], dtype=np.float32)
        disparity[~(disparity > 0)] = np.nan
        confidence = None
        if len(results) > 1:
            confidence = np.clip(np.asarray(results[1][crop], dtype=np.float32), 0.0, 1.0)
        # the export's fixed count (None for an export without the metadata): what /diagnostics reports
        return StereoEstimate(disparity=disparity, confidence=confidence, iterations=self.iters)
