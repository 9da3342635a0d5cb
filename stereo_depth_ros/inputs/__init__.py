"""The node's input side, ROS-free: what turns the camera's messages into stereo pairs for the pipeline.

- `sources`: which topics and message types the node subscribes to (`image_transport`, `rectify`) and the decoder
  that turns a synchronised pair into what the pipeline takes;
- `compressed`: sensor_msgs/CompressedImage (JPEG, PNG) -> pixels (also used by `stereo-distill extract`);
- `rectify`: raw images rectified from their camera_info (K, D, R, P), maps cached per camera_info;
- `sync`: pairs left/right images and their camera_info by stamp (stereo_image_proc's policies).
"""
