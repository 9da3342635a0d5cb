"""Development kit of stereo_depth_ros: what the demo, the tests and the benches share, kept out of the runtime.

- `motorcycle`: the one loader of the real test pair (scikit-image's Middlebury "Motorcycle") and its calibration;
- `client`: drive a `stereo_depth_node` from outside over real DDS (node process, test client, messages);
- `outputs`: colourised PNGs and PLY point clouds of results;
- `demo`: `make demo`.

Nothing under `stereo_depth_ros/` imports this package; the offline CLI (`stereo_distill`) uses `motorcycle` for
its toy data and the export's verification pair.
"""
