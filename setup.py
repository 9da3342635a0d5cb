"""ament_python install and plain pip install of stereo_depth_ros.

`colcon build` installs the console scripts into lib/stereo_depth_ros/ (see setup.cfg) and the launch, config
and rviz files into share/stereo_depth_ros/; `pip install -e .[train,test]` gives the same package in a venv.

Three import packages: `stereo_depth_ros` (the runtime: node, models, estimators), `stereo_distill` (the offline
CLI; its folder is `training/`, installed under the CLI's name because a top-level `training` package would
collide with any other of that name) and `stereo_devkit` (what the demo, the tests and the benches share).
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "stereo_depth_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "stereo_devkit", "stereo_devkit.*"])
    + ["stereo_distill" + name[len("training"):] for name in find_packages(include=["training", "training.*"])],
    package_dir={"stereo_distill": "training"},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/cameras", glob("config/cameras/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "opencv-python-headless", "pyyaml", "torch", "timm"],
    extras_require={
        "onnx": ["onnx", "onnxruntime-gpu"],
        "train": ["rosbags", "tqdm", "tensorboard", "onnx", "onnxruntime-gpu"],
        "test": ["pytest<9", "scikit-image"],
    },
    zip_safe=True,
    maintainer="stereo_depth_ros maintainers",
    maintainer_email="maintainers@stereo-depth-ros.invalid",
    description="Learned stereo depth for ROS 2 (RT-IGEV student, Selective-IGEV teacher)",
    license="MIT",
    entry_points={
        "console_scripts": [
            "stereo_depth_node = stereo_depth_ros.node:main",
            "stereo-distill = stereo_distill.cli:main",
        ],
    },
)
