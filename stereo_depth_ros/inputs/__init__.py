"""The node's input side, ROS-free: what turns the camera's messages into stereo pairs for the pipeline.

- `sync`: pairs left/right images and their camera_info by stamp (stereo_image_proc's policies).
"""
