"""`make loop`'s decisions: which teacher and student start it picks, and the verdict it writes to report.json.

The loop itself (minutes of CPU) is `make loop`; its stages are the subcommands tested in their own files."""
from __future__ import annotations

from stereo_distill.loop import NODE_NAME, REPO, loop_report, resolve_student, resolve_teacher

from stereo_depth_ros.config import load_params_file


def test_teacher_is_the_official_file_when_present_else_sgbm(tmp_path):
    official = tmp_path / "middlebury_finetune.pth"
    source, why = resolve_teacher(str(official))
    assert source == "sgbm" and "not found" in why and "SGBM" in why
    official.write_bytes(b"weights")
    source, why = resolve_teacher(str(official))
    assert source == str(official) and "present" in why


def test_student_start_official_else_seeded_init(tmp_path):
    official = tmp_path / "sceneflow.pth"
    source, what, trained = resolve_student(str(official))
    assert (source, trained) == ("none", False) and "SEEDED RANDOM INIT" in what
    official.write_bytes(b"official")
    assert resolve_student(str(official))[0::2] == (str(official), True)


def metrics(epe: float, bad3: float) -> dict:
    return {"epe": epe, "bad1": bad3 + 0.1, "bad2": bad3 + 0.05, "bad3": bad3, "d1": bad3, "pairs": 6,
            "valid_fraction": 0.9, "reference": "ground_truth", "per_pair": {}, "seconds_per_pair": 0.1}


def test_report_verdict_and_gap_closed():
    evaluation = {**metrics(3.0, 0.2), "compare": {"teacher": metrics(1.0, 0.1), "student_before": metrics(41.0, 0.9)}}
    report = loop_report("sgbm", evaluation, {"teacher_why": "w", "student_start": "s"})
    assert report["teacher"] == "sgbm" and report["reference"] == "ground_truth"
    assert report["student_after"]["epe"] == 3.0 and report["teacher_metrics"]["bad3"] == 0.1
    assert "per_pair" not in report["student_before"]
    assert report["after_better_than_before"] and report["gap_closed"] == 0.95
    worse = {**evaluation, **metrics(50.0, 0.95)}
    assert not loop_report("/w/middlebury_finetune.pth", worse, {})["after_better_than_before"]
    assert loop_report("/w/middlebury_finetune.pth", worse, {})["teacher"] == "middlebury_finetune.pth"


def test_shipped_config_has_every_key_the_loop_reads():
    params = load_params_file(REPO / "config" / "distill.yaml", NODE_NAME)
    source = (REPO / "training" / "loop.py").read_text()
    import re

    read = set(re.findall(r'params\["([a-z_.]+)"\]', source)) | set(re.findall(r'params\.get\("([a-z_.]+)"', source))
    assert read and read <= set(params), sorted(read - set(params))


def test_eval_takes_sgbm_as_model_and_as_compared_teacher(tmp_path):
    """The loop measures its SGBM teacher with `eval --compare sgbm BEFORE`; SGBM is real geometry (low EPE)."""
    import json

    from stereo_distill import cli
    from stereo_distill.toy import motorcycle_crops, write_data

    data = write_data(tmp_path / "data", motorcycle_crops((64, 96), (0.3,), 2, seed=0))
    assert cli.main(["eval", "--model", "sgbm", "--max-disp", "32", "--data", str(data),
                     "--out", str(tmp_path / "sgbm.json")]) == 0
    result = json.loads((tmp_path / "sgbm.json").read_text())
    assert result["reference"] == "ground_truth" and result["model"] == "opencv_sgbm" and result["epe"] < 2.0
