"""Development kit of stereo_depth_ros: what the demo, the tests and the benches share, kept out of the runtime.

- `motorcycle`: the one loader of the real test pair (scikit-image's Middlebury "Motorcycle") and its calibration;
- `metrics`: the one definition of EPE, D1, bad-N and coverage (eval, training's validation, the demo);
- `node_process`: a `stereo_depth_node` as its own process, in a ROS environment only it and its clients see;
- `client`: talk to that node over real DDS (publish pairs and camera_info, record every output);
- `outputs`: colourised pictures (demo, TensorBoard, eval's comparison, the label contact sheet) and PLY clouds;
- `demo`: `make demo`.

Nothing under `stereo_depth_ros/` imports this package, and this package imports nothing of the offline CLI
(`stereo_distill`), which uses `motorcycle` (toy data, the export's verification pair), `metrics` and `outputs`.
"""
