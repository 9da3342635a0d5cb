"""Where a relative model or params path is looked for, so that the node and the launch file work from any
working directory. One order, used by the node's parameter check (`model_path`) and by `stereo.launch.py`
(`params_file`):

1. the working directory: `./PATH`;
2. the installed package's share folder, `<prefix>/share/stereo_depth_ros/PATH`, in each prefix of
   AMENT_PREFIX_PATH that has the package (a `colcon build` install, the venv that `make venv` builds; an
   overlay before its underlays);
3. the source checkout the package runs from, `<checkout>/PATH`: the tree it is imported from (an editable
   install such as `make venv`'s), or, for a colcon install (which copies the package), the checkout in the
   colcon workspace whose `install/` holds it: the workspace itself when the checkout is the workspace, or a
   package folder under its `src/` (`checkout_directories`);
4. model files only, the `weights/` folder of 2 and 3: `<share>/weights/PATH`, `<checkout>/weights/PATH`.

The first existing file wins. Absolute paths (and `~`) are used as given. When nothing is found,
`FileSearchError` lists every place looked. Standard library only: the launch file runs it in `ros2 launch`.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "stereo_depth_ros"
KINDS = ("model", "params")


class FileSearchError(FileNotFoundError):
    """No file at any of the places looked; `looked_in` lists them in search order."""

    def __init__(self, message: str, looked_in: list[Path]) -> None:
        super().__init__(message)
        self.looked_in = looked_in


def share_directories() -> list[Path]:
    """`<prefix>/share/stereo_depth_ros` of every ament prefix that has the package, in AMENT_PREFIX_PATH order.

    Read like ament_index_python reads the index (the package's marker file under each prefix), without
    importing it: ament_index_python.get_package_share_directory stops at the first prefix.
    """
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    marker = Path("share", "ament_index", "resource_index", "packages", PACKAGE)
    return [Path(p) / "share" / PACKAGE for p in prefixes if (Path(p) / marker).is_file()]


def _is_checkout(root: Path) -> bool:
    """A source tree of this package: its package.xml beside the Python package."""
    return (root / "package.xml").is_file() and (root / PACKAGE / "__init__.py").is_file()


def checkout_directory() -> Path | None:
    """The source tree this package is imported from (it has package.xml beside the package), or None."""
    root = Path(__file__).resolve().parent.parent
    return root if _is_checkout(root) else None


def _workspace_checkouts(share: Path) -> list[Path]:
    """Checkouts of this package in the colcon workspace whose install/ holds `share`
    (`<ws>/install[/stereo_depth_ros]/share/stereo_depth_ros`): `<ws>` itself, or `<ws>/src/**` (3 levels)."""
    prefix = share.parent.parent
    install = prefix.parent if prefix.parent.name == "install" else prefix if prefix.name == "install" else None
    if install is None:
        return []
    workspace = install.parent
    candidates = [workspace] + sorted(path.parent for depth in ("*", "*/*", "*/*/*")
                                      for path in (workspace / "src").glob(f"{depth}/package.xml"))
    return [path for path in candidates if _is_checkout(path)]


def checkout_directories() -> list[Path]:
    """Every checkout of this package to look in: the one it is imported from, then those of the colcon
    workspaces on AMENT_PREFIX_PATH that install it (a `colcon build` copies the package, not weights/)."""
    found = [checkout_directory()] + [c for share in share_directories() for c in _workspace_checkouts(share)]
    unique: list[Path] = []
    for path in found:
        if path is not None and path.resolve() not in unique:
            unique.append(path.resolve())
    return unique


def search_locations(path: str | os.PathLike, kind: str = "model") -> list[Path]:
    """Every place `path` is looked for, in order (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    given = Path(path).expanduser()
    if given.is_absolute():
        return [given]
    roots = share_directories() + checkout_directories()
    places = [Path.cwd() / given] + [root / given for root in roots]
    if kind == "model" and given.parts[:1] != ("weights",):
        places += [root / "weights" / given for root in roots]
    unique: list[Path] = []
    for place in places:
        if place not in unique:
            unique.append(place)
    return unique


def find_file(path: str | os.PathLike, kind: str = "model") -> Path:
    """The first existing file among `search_locations(path, kind)`; raises FileSearchError naming them all."""
    if not str(path):
        raise FileSearchError(f"no {kind} file given", [])
    places = search_locations(path, kind)
    for place in places:
        if place.is_file():
            return place
    raise FileSearchError(f"{str(path)!r} not found; looked in: {', '.join(str(p) for p in places)}", places)
