"""Hard-pair capture in stereo_depth_node (issue 14), over real DDS with the node in its own process.

- `capturing`: one opencv_sgbm node (weight-free, small images) capturing on low confidence, with a pair limit; the
  `~/capture` Trigger service, the limit and its one warning, and `stereo-distill label --teacher sgbm` on the
  folder it filled.
- a node restarted on a folder that earlier runs filled: names continue, the megabyte limit counts what is there,
  and the period captures even while nobody subscribes (no inference runs then).
- a node whose capture disk is slow (tests/slow_disk_node.py: each sample write sleeps first; the only mock here,
  since a reliably slow disk cannot be made without root): the outputs keep the input rate, the full queue drops
  and counts, and what was queued is written.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from ros_helpers import TIMEOUT, StampCounter, StereoRigClient, node_env, small_rig
from stereo_depth_ros.capture import QUEUE_PAIRS
from stereo_depth_ros.capture_policy import pair_reserve
from stereo_depth_ros.dataset_layout import folder_bytes, sample_names, write_sample
from stereo_devkit.client import StereoClient, diagnostic_values
from stereo_devkit.node_process import NodeProcess, node_command

REPO = Path(__file__).resolve().parents[1]
SGBM = {"backend": "opencv_sgbm", "max_disparity": 64, "diagnostics_period": 0.5}
WIDTH = 192  # Motorcycle at 192x130: SGBM finds ~91 % of its pixels confident, a flat grey pair none


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _wait_for_sample(folder: Path, stamp, timeout: float = TIMEOUT) -> str | None:
    suffix = f"_{_stamp_ns(stamp)}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [name for name in sample_names(folder) if name.endswith(suffix)]
        if found:
            return found[0]
        time.sleep(0.05)
    return None


def _meta(folder: Path, name: str) -> dict:
    return json.loads((folder / name / "meta.json").read_text())


def _diagnostics(rc: StereoRigClient, predicate, timeout: float = TIMEOUT) -> dict | None:
    # Only messages from now on: a figure taken before the action in hand would pass or fail for nothing.
    msg = rc.client.wait_for("diagnostics", lambda m: predicate(diagnostic_values(m) or {}), timeout,
                             start=rc.client.count("diagnostics"))
    return None if msg is None else diagnostic_values(msg)


def _flat(rig):
    grey = np.full_like(rig.left, 128)
    return dataclasses.replace(rig, left=grey, right=grey.copy())


def _call_capture(rc: StereoRigClient):
    from std_srvs.srv import Trigger

    client = rc.client.node.create_client(Trigger, "/stereo_depth_node/capture")
    try:
        assert client.wait_for_service(timeout_sec=TIMEOUT), "no ~/capture service"
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + TIMEOUT
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), "~/capture did not answer"
        return future.result()
    finally:
        rc.client.node.destroy_client(client)


def _serve(workdir: Path, params: dict, outputs: tuple, command: list[str] | None = None):
    env = node_env(workdir)
    node = NodeProcess(command or node_command(params), env, workdir / "node.log", cwd=REPO)
    client = StereoClient(env, outputs=outputs)
    try:
        assert node.wait_for_log("ready:", TIMEOUT), node.log()
        if outputs:
            assert client.wait_for_node(TIMEOUT), f"node not discovered; log:\n{node.log()}"
        else:
            deadline = time.monotonic() + TIMEOUT
            while not all(p.get_subscription_count() for p in client.pub.values()):
                assert time.monotonic() < deadline, f"node not discovered; log:\n{node.log()}"
                time.sleep(0.1)
            time.sleep(0.3)
        yield node, StereoRigClient(client, small_rig(WIDTH), StampCounter())
    finally:
        client.close()
        code = node.stop()
    assert code == 0, node.log()


@pytest.fixture(scope="module")
def capturing(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("capturing")
    folder = workdir / "captures"
    params = dict(SGBM, capture_dir=str(folder), capture_confidence_below=0.5, capture_max_pairs=3)
    for node, rc in _serve(workdir, params, outputs=("disparity",)):
        yield node, rc, folder


def test_trigger_service_captures_the_next_pair(capturing):
    node, rc, folder = capturing
    confident = rc.publish_valid(info_lead=0.05)  # ~91 % confident: not a hard pair
    rc.expect_output(confident)
    reply = _call_capture(rc)
    assert reply.success and str(folder) in reply.message, reply.message
    stamp = rc.publish_valid()
    rc.expect_output(stamp)
    name = _wait_for_sample(folder, stamp)
    assert name is not None, f"the triggered pair was not captured; log:\n{node.log()}"
    assert sample_names(folder) == [name]  # the confident pair before the trigger was not captured
    meta = _meta(folder, name)
    assert meta["reason"] == "trigger" and meta["confident_share"] > 0.5
    assert meta["source"] == "/stereo_depth_node" and (folder / "camera_info.yaml").is_file()


def test_low_confidence_pair_is_captured(capturing):
    node, rc, folder = capturing
    stamp = rc.stamps.next()
    rc.client.publish(*rc.pair(stamp, rig=_flat(rc.rig)))
    rc.expect_output(stamp)
    name = _wait_for_sample(folder, stamp)
    assert name is not None, f"the low-confidence pair was not captured; log:\n{node.log()}"
    meta = _meta(folder, name)
    assert meta["reason"] == "confidence" and meta["confident_share"] < 0.5
    assert name == sample_names(folder)[-1]  # names sort in capture order


def test_pair_limit_stops_capture_with_one_warning(capturing):
    node, rc, folder = capturing
    for _ in range(4):
        stamp = rc.stamps.next()
        rc.client.publish(*rc.pair(stamp, rig=_flat(rc.rig)))
        rc.expect_output(stamp)
    values = _diagnostics(rc, lambda v: v.get("capture", "").startswith("stopped"))
    assert values is not None, node.log()
    assert "capture_max_pairs (3) reached" in values["capture"] and values["captured_pairs"] == "3"
    assert len(sample_names(folder)) == 3
    assert node.log().count("capture stopped: capture_max_pairs (3) reached") == 1
    reply = _call_capture(rc)
    assert not reply.success and "capture_max_pairs (3)" in reply.message


def test_capture_folder_labels_with_the_sgbm_teacher(capturing, tmp_path):
    from stereo_distill import cli

    node, rc, folder = capturing
    names = sample_names(folder)
    assert names
    labels = tmp_path / "labels"
    assert cli.main(["label", str(folder), "--teacher", "sgbm", "--max-disp", "64", "--out", str(labels)]) == 0
    manifest = json.loads((labels / "manifest.json").read_text())
    assert manifest["teacher"]["kind"] == "opencv_sgbm" and manifest["summary"]["labelled"] == len(names)
    for name in names:
        disparity = np.load(labels / name / "disparity.npy")
        assert disparity.shape == (rc.rig.left.shape[0], WIDTH)


def test_restart_counts_the_folder_for_the_megabyte_limit_and_captures_while_idle(tmp_path):
    folder = tmp_path / "captures"
    rig = small_rig(WIDTH)
    for index in range(2):  # an earlier run's pairs
        write_sample(folder, f"{index:08d}_{index + 1}", rig.left, rig.right)
    # Room for exactly one more pair: a pair is only started when its worst-case size (the reserve) fits, and the
    # first one's real size (more than 1 kB) then leaves too little for a second reserve.
    limit_mb = (folder_bytes(folder) + pair_reserve(rig.left.shape[0], WIDTH) + 1000) / 1e6
    params = dict(SGBM, capture_dir=str(folder), capture_every_s=0.01, capture_max_megabytes=limit_mb)
    for node, rc in _serve(tmp_path, params, outputs=()):  # nobody subscribes: no inference runs
        stamps = []
        for _ in range(4):
            stamps.append(rc.publish_valid(info_lead=0.05))
            time.sleep(0.1)
        values = _diagnostics(rc, lambda v: v.get("capture", "").startswith("stopped")
                              and v.get("captured_pairs") == "1")
        assert values is not None, node.log()
        assert "capture_max_megabytes" in values["capture"] and values["processed_pairs"] == "0"
        assert sample_names(folder) == ["00000000_1", "00000001_2", f"00000002_{_stamp_ns(stamps[0])}"]
        assert folder_bytes(folder) <= limit_mb * 1e6
        assert node.log().count("capture stopped: capture_max_megabytes") == 1


def test_slow_capture_disk_never_stalls_the_output(tmp_path):
    folder = tmp_path / "captures"
    params = dict(SGBM, capture_dir=str(folder), capture_every_s=1e-6)  # every pair
    command = node_command(params)
    command[1:3] = [str(REPO / "tests" / "slow_disk_node.py")]  # each sample write takes 0.5 s more
    for node, rc in _serve(tmp_path, params, outputs=("disparity",), command=command):
        stamps = []
        start = time.monotonic()
        for index in range(20):  # 10 Hz for 2 s
            stamps.append(rc.publish_valid(info_lead=0.05 if index == 0 else 0.0))
            time.sleep(max(0.0, start + 0.1 * (index + 1) - time.monotonic()))
        rc.client.wait_for_stamp("disparity", stamps[-1], TIMEOUT)
        answered = sum(rc.client.received_at("disparity", stamp) is not None for stamp in stamps)
        values = _diagnostics(rc, lambda v: "captured_pairs" in v)
        # Had capture waited for the disk (0.5 s a pair), about 5 of the 20 pairs would have been answered.
        assert answered >= 15, f"{answered} of 20 pairs answered; log:\n{node.log()}"
        assert int(values["captured_pairs"]) <= 6 and int(values["capture_dropped"]) >= 5, values
        # Every pair offered (with or without inference) is written or dropped and counted. While the stream ran,
        # the writer held one pair and the queue QUEUE_PAIRS more, plus one for each write that finished (0.5 s).
        def settled(v):
            offered = int(v.get("processed_pairs", 0)) + int(v.get("idle_pairs", 0))
            return (v.get("capture_queued") == "0"
                    and int(v.get("captured_pairs", 0)) + int(v.get("capture_dropped", 0)) == offered)

        done = _diagnostics(rc, settled, timeout=3 * TIMEOUT)
        assert done is not None, node.log()
        captured = int(done["captured_pairs"])
        assert QUEUE_PAIRS + 1 <= captured <= QUEUE_PAIRS + 1 + 5, done
        assert len(sample_names(folder)) == captured
