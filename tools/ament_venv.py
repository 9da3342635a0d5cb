"""Make a venv an ament prefix for this package, as `colcon build` + `source install/setup.bash` do for install/.

`pip install -e .` (what `make venv` runs) installs the Python package and the console scripts but none of
setup.py's data files, so `ros2 launch stereo_depth_ros ...` and `ros2 run stereo_depth_ros ...` cannot find the
package. This script, run by `make venv` after the editable install (idempotent):

- links each data file of setup.py into the venv's prefix (the ament index marker
  share/ament_index/resource_index/packages/stereo_depth_ros, share/stereo_depth_ros/package.xml, launch/,
  config/, rviz/), pointing at the checkout like the editable install itself, so edits take effect at once;
- links lib/stereo_depth_ros/<script> to bin/<script> for each console script: where `ros2 run` and launch_ros
  look for a package's executables;
- makes bin/activate put the venv first on AMENT_PREFIX_PATH (which ament_index_python reads) and deactivate
  take it off again; drops a COLCON_IGNORE so that a `colcon build` over the checkout never crawls the venv;
- writes local_setup.sh/.bash/.zsh, which every ament prefix has: colcon warns about a prefix on AMENT_PREFIX_PATH
  without them, and the install/setup.bash of a workspace built with the venv active sources them (they put the
  venv on AMENT_PREFIX_PATH, nothing else).

    python tools/ament_venv.py .venv
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

PACKAGE = "stereo_depth_ros"
REPO = Path(__file__).resolve().parents[1]
MARK = "# stereo_depth_ros: this venv is an ament prefix (tools/ament_venv.py)"
ACTIVATE_BLOCK = f"""
{MARK}
_OLD_VIRTUAL_AMENT_PREFIX_PATH="${{AMENT_PREFIX_PATH:-}}"
AMENT_PREFIX_PATH="$VIRTUAL_ENV${{AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}}"
export AMENT_PREFIX_PATH
"""
DEACTIVATE_BLOCK = f"""    {MARK}
    if [ -n "${{_OLD_VIRTUAL_AMENT_PREFIX_PATH+set}}" ] ; then
        if [ -n "$_OLD_VIRTUAL_AMENT_PREFIX_PATH" ] ; then
            AMENT_PREFIX_PATH="$_OLD_VIRTUAL_AMENT_PREFIX_PATH"
            export AMENT_PREFIX_PATH
        else
            unset AMENT_PREFIX_PATH
        fi
        unset _OLD_VIRTUAL_AMENT_PREFIX_PATH
    fi
"""


def setup_py_contents() -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(data_files, console script names) as setup.py declares them: one list for colcon, pip and this script."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from distutils.core import run_setup  # setuptools' copy (its distutils shim), as colcon reads setup.py

    cwd = os.getcwd()
    os.chdir(REPO)  # setup.py globs relative to the checkout
    try:
        dist = run_setup(str(REPO / "setup.py"), stop_after="init")
    finally:
        os.chdir(cwd)
    entry_points = getattr(dist, "entry_points", None) or {}  # setuptools adds it to distutils' Distribution
    scripts = [entry.split("=")[0].strip() for entry in entry_points.get("console_scripts", [])]
    return list(dist.data_files or []), scripts


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    temporary = link.with_name(f".{link.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)


def link_package(prefix: Path) -> list[Path]:
    """Link the data files and executables into `prefix`; remove links of ours that setup.py no longer lists."""
    data_files, scripts = setup_py_contents()
    links: dict[Path, Path] = {}
    for directory, files in data_files:
        for name in files:
            links[prefix / directory / Path(name).name] = REPO / name
    for script in scripts:
        executable = prefix / "bin" / script
        if not executable.is_file():
            raise SystemExit(f"{executable} missing: run `pip install -e .` into {prefix} first")
        links[prefix / "lib" / PACKAGE / script] = executable
    for link, target in links.items():
        _link(target, link)
    for owned in (prefix / "share" / PACKAGE, prefix / "lib" / PACKAGE):
        for path in owned.rglob("*"):
            if path.is_symlink() and path not in links:
                path.unlink()
    return sorted(links)


def patch_activate(prefix: Path) -> bool:
    """Make bin/activate (bash/zsh) set AMENT_PREFIX_PATH; False when it already does."""
    activate = prefix / "bin" / "activate"
    text = activate.read_text()
    if MARK in text:
        return False
    head = "deactivate () {\n"
    if head not in text:
        raise SystemExit(f"{activate} has no `deactivate () {{` function; cannot add AMENT_PREFIX_PATH to it")
    text = text.replace(head, head + DEACTIVATE_BLOCK, 1) + ACTIVATE_BLOCK
    activate.write_text(text)
    return True


def write_local_setup(prefix: Path) -> None:
    """local_setup.{sh,bash,zsh}: the venv on AMENT_PREFIX_PATH (absolute, like bin/activate's VIRTUAL_ENV)."""
    script = (f"{MARK}\n"
              f'case ":${{AMENT_PREFIX_PATH:-}}:" in\n'
              f'  *":{prefix}:"*) ;;\n'
              f'  *) AMENT_PREFIX_PATH="{prefix}${{AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}}"\n'
              f"     export AMENT_PREFIX_PATH ;;\n"
              f"esac\n")
    for shell in ("sh", "bash", "zsh"):
        path = prefix / f"local_setup.{shell}"
        path.write_text(script)
        path.chmod(0o644)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    prefix = Path(argv[0]).absolute()
    if not (prefix / "bin" / "activate").is_file():
        print(f"{prefix} is not a venv (no bin/activate)", file=sys.stderr)
        return 2
    links = link_package(prefix)
    patched = patch_activate(prefix)
    (prefix / "COLCON_IGNORE").touch()
    write_local_setup(prefix)
    print(f"{prefix}: ament prefix for {PACKAGE} ({len(links)} links"
          + ("; bin/activate now sets AMENT_PREFIX_PATH)" if patched else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
