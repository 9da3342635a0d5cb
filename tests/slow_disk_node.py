"""stereo_depth_node with a slow disk under its hard-pair capture, for tests/test_capture_node.py.

Every sample write first sleeps SLOW_DISK_DELAY_S seconds (default 0.5), then writes for real. This is the one mock
of those tests: a disk that is reliably slow cannot be made here without root (dm-delay, a FUSE filesystem), and
the delay must be the same on every run. Everything else (the node process, DDS, the writer thread, the files) is
real. Run as the node: `python tests/slow_disk_node.py --ros-args -p ...`.
"""
import os
import sys
import time

import stereo_depth_ros.capture as capture
from stereo_depth_ros.node import main

DELAY_S = float(os.environ.get("SLOW_DISK_DELAY_S", "0.5"))
_write_sample = capture.write_sample


def slow_write_sample(*args, **kwargs):
    time.sleep(DELAY_S)
    return _write_sample(*args, **kwargs)


capture.write_sample = slow_write_sample  # the writer thread looks it up per sample

if __name__ == "__main__":
    sys.exit(main())
