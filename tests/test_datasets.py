"""Each dataset reader against small files written in that dataset's own on-disk format."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from stereo_depth_ros.dataset_layout import write_camera_info, write_image
from stereo_distill.datasets import DatasetError, open_dataset, split_samples
from stereo_distill.image_files import read_pfm, write_pfm, write_scaled_disparity_png

H, W = 12, 16


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (H, W, 3), np.uint8), rng.integers(0, 256, (H, W, 3), np.uint8)


def _disparity(seed: int, quantum: float) -> np.ndarray:
    """Positive disparities on the format's own grid, with a few invalid pixels."""
    rng = np.random.default_rng(seed)
    disp = (rng.integers(1, 200 * quantum, (H, W)) / quantum).astype(np.float32)
    disp[0, :3] = np.nan
    return disp


def _write_bgr(path, rgb):
    # Written with cv2 directly (not our writer), the way the datasets' own files are plain PNGs.
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _assert_disp_equal(got, expected, atol=0.0):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], atol=atol, rtol=0)


def test_pfm_matches_hand_built_bytes(tmp_path):
    # A 2x3 map, little-endian: scale -1, raster bottom row first (the format's definition, built by hand).
    top, bottom = [1.0, 2.0, 3.0], [4.0, float("inf"), 6.0]
    (tmp_path / "le.pfm").write_bytes(b"Pf\n3 2\n-1.0\n" + struct.pack("<6f", *bottom, *top))
    (tmp_path / "be.pfm").write_bytes(b"Pf\n3 2\n1.0\n" + struct.pack(">6f", *bottom, *top))
    expected = np.array([top, bottom], np.float32)
    np.testing.assert_array_equal(read_pfm(tmp_path / "le.pfm"), expected)
    np.testing.assert_array_equal(read_pfm(tmp_path / "be.pfm"), expected)
    write_pfm(tmp_path / "ours.pfm", expected)
    assert (tmp_path / "ours.pfm").read_bytes() == (tmp_path / "le.pfm").read_bytes()


def test_pfm_truncated_is_a_clear_error(tmp_path):
    (tmp_path / "t.pfm").write_bytes(b"Pf\n3 2\n-1.0\n" + b"\0" * 8)
    with pytest.raises(DatasetError, match="truncated"):
        read_pfm(tmp_path / "t.pfm")


def test_canonical_layout_with_camera_info(tmp_path):
    left, right = _pair(0)
    disp = _disparity(0, 100)
    for name in ("000001_20", "000000_10"):
        write_image(tmp_path / name / "left.png", left)
        write_image(tmp_path / name / "right.png", right)
    write_scaled_disparity_png(tmp_path / "000000_10" / "left_disp.png", disp, 100)
    p_right = [500.0, 0, 40.0, -500.0 * 0.12, 0, 500.0, 30.0, 0, 0, 0, 1, 0]
    p_left = [500.0, 0, 40.0, 0, 0, 500.0, 30.0, 0, 0, 0, 1, 0]
    write_camera_info(tmp_path / "camera_info.yaml",
                      {"image_width": W, "image_height": H, "projection_matrix": {"rows": 3, "cols": 4, "data": p_left}},
                      {"image_width": W, "image_height": H, "projection_matrix": {"rows": 3, "cols": 4, "data": p_right}})
    data = open_dataset(tmp_path)
    assert data.layout == "folders" and data.names() == ["000000_10", "000001_20"]
    first, second = data
    np.testing.assert_array_equal(first.load_left(), left)
    np.testing.assert_array_equal(first.load_right(), right)
    _assert_disp_equal(first.load_disparity(), disp)
    assert second.load_disparity() is None


def test_instereo2k_as_downloaded(tmp_path):
    # InStereo2K: train/part<k>/<id>/ and test/<id>/, left_disp.png uint16 = disparity * 100, 0 = invalid.
    folders = ["train/part1/000000", "train/part1/000001", "train/part2/000005", "test/000003"]
    disps = {}
    for i, folder in enumerate(folders):
        left, right = _pair(i)
        _write_bgr(tmp_path / folder / "left.png", left)
        _write_bgr(tmp_path / folder / "right.png", right)
        disps[folder] = _disparity(i, 100)
        raw = np.nan_to_num(disps[folder] * 100, nan=0).round().astype(np.uint16)
        cv2.imwrite(str(tmp_path / folder / "left_disp.png"), raw)
    data = open_dataset(tmp_path)
    assert data.names() == sorted(folders)
    for sample in data:
        _assert_disp_equal(sample.load_disparity(), disps[sample.name], atol=1e-5)
    np.testing.assert_array_equal(data[0].load_left(), _pair(3)[0])  # "test/000003" sorts first


def test_middlebury_2014_and_middeval3(tmp_path):
    calib = ("cam0=[1758.23 0 953.34; 0 1758.23 552.29; 0 0 1]\ncam1=[1758.23 0 953.34; 0 1758.23 552.29; 0 0 1]\n"
             "doffs=0\nbaseline=111.53\nwidth=1920\nheight=1080\nndisp=290\nisint=0\nvmin=75\nvmax=262\n")
    scenes = {"Adirondack-perfect": "disp0.pfm", "trainingQ/Motorcycle": "disp0GT.pfm", "testQ/Australia": None}
    expected = {}
    for i, (scene, gt) in enumerate(scenes.items()):
        left, right = _pair(i)
        _write_bgr(tmp_path / scene / "im0.png", left)
        _write_bgr(tmp_path / scene / "im1.png", right)
        (tmp_path / scene / "calib.txt").write_text(calib)
        if gt:
            disp = _disparity(i, 4)
            raw = np.where(np.isnan(disp), np.inf, disp).astype("<f4")
            (tmp_path / scene / gt).write_bytes(f"Pf\n{W} {H}\n-1\n".encode() + raw[::-1].tobytes())
            expected[scene] = disp
    data = open_dataset(tmp_path)
    assert data.layout == "middlebury" and set(data.names()) == set(scenes)
    for sample in data:
        got = sample.load_disparity()
        if sample.name in expected:
            _assert_disp_equal(got, expected[sample.name])
        else:
            assert got is None
    np.testing.assert_array_equal(data[0].load_right(), _pair(0)[1])


@pytest.mark.parametrize("year,left_dir,right_dir,gt_dir", [
    (2015, "image_2", "image_3", "disp_occ_0"), (2012, "colored_0", "colored_1", "disp_occ")])
def test_kitti(tmp_path, year, left_dir, right_dir, gt_dir):
    # KITTI: training/<left>/000000_10.png ..., ground truth uint16 = disparity * 256 for the _10 frames only.
    root = tmp_path / f"kitti{year}"
    disps = {}
    for i, frame in enumerate(["000000_10", "000000_11", "000001_10"]):
        left, right = _pair(i)
        _write_bgr(root / "training" / left_dir / f"{frame}.png", left)
        _write_bgr(root / "training" / right_dir / f"{frame}.png", right)
        if frame.endswith("_10"):
            disps[frame] = _disparity(i, 256)
            (root / "training" / gt_dir).mkdir(parents=True, exist_ok=True)
            raw = np.nan_to_num(disps[frame] * 256, nan=0).astype(np.uint16)
            cv2.imwrite(str(root / "training" / gt_dir / f"{frame}.png"), raw)
    _write_bgr(root / "testing" / left_dir / "000007_10.png", _pair(9)[0])
    _write_bgr(root / "testing" / right_dir / "000007_10.png", _pair(9)[1])

    data = open_dataset(root)
    assert data.layout == f"kitti{year}"
    assert data.names() == ["testing/000007_10", "training/000000_10", "training/000000_11", "training/000001_10"]
    by_name = {s.name: s for s in data}
    _assert_disp_equal(by_name["training/000000_10"].load_disparity(), disps["000000_10"])
    assert by_name["training/000000_11"].load_disparity() is None
    np.testing.assert_array_equal(by_name["training/000001_10"].load_left(), _pair(2)[0])
    # The split folder itself is also accepted.
    assert open_dataset(root / "training").names() == ["000000_10", "000000_11", "000001_10"]


def test_left_right_folders_pair_by_sorted_name(tmp_path):
    for i in range(3):
        left, right = _pair(i)
        _write_bgr(tmp_path / "left" / f"frame_{i:03d}_L.png", left)
        _write_bgr(tmp_path / "right" / f"frame_{i:03d}_R.png", right)
    data = open_dataset(tmp_path)
    assert data.layout == "left_right_folders" and len(data) == 3
    np.testing.assert_array_equal(data[2].load_right(), _pair(2)[1])
    assert data[1].load_disparity() is None
    (tmp_path / "right" / "frame_002_R.png").unlink()
    with pytest.raises(DatasetError, match="3 images but"):
        open_dataset(tmp_path)


def test_grey_image_becomes_rgb_and_bad_files_are_named(tmp_path):
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    (tmp_path / "s").mkdir()
    cv2.imwrite(str(tmp_path / "s" / "left.png"), grey)
    (tmp_path / "s" / "right.png").write_bytes(b"not a png")
    sample = open_dataset(tmp_path)[0]
    np.testing.assert_array_equal(sample.load_left(), np.repeat(grey[..., None], 3, axis=2))
    with pytest.raises(DatasetError, match="right.png"):
        sample.load_pair()


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no stereo pairs"):
        open_dataset(tmp_path)


def test_split_is_seeded_disjoint_and_stable(tmp_path):
    left, right = _pair(0)
    for i in range(60):
        write_image(tmp_path / f"{i:06d}" / "left.png", left)
        write_image(tmp_path / f"{i:06d}" / "right.png", right)
    data = open_dataset(tmp_path)
    train, val = data.split(0.25, seed=3)
    assert {s.name for s in train} | {s.name for s in val} == set(data.names())
    assert not {s.name for s in train} & {s.name for s in val}
    assert 5 <= len(val) <= 25
    again_train, again_val = split_samples(list(reversed(data.samples)), 0.25, seed=3)
    assert {s.name for s in again_val} == {s.name for s in val}
    other_val = split_samples(data.samples, 0.25, seed=4)[1]
    assert {s.name for s in other_val} != {s.name for s in val}
    # Samples keep their side when the set grows.
    grown_val = split_samples(data.samples[:30], 0.25, seed=3)[1]
    assert {s.name for s in grown_val} == {s.name for s in val if int(s.name) < 30}


def test_split_gives_both_sides_a_pair_on_tiny_sets():
    # train and `eval --split val` share this split: a two-pair set must not leave validation empty.
    from stereo_distill.datasets import StereoSample

    samples = [StereoSample(name=f"pair{i}", left=Path("l.png"), right=Path("r.png")) for i in range(2)]
    for seed in range(20):
        train, val = split_samples(samples, 0.01, seed)
        assert len(train) == 1 and len(val) == 1
    assert split_samples(samples, 0.0, 0) == (samples, [])
