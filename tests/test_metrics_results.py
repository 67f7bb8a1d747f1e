import json
import math

import torch

from rgbd_portrait.evaluation.results import MetricAccumulator, format_markdown_table, results_to_json, write_json


def test_accumulator_averages_per_image_values_over_batches():
    accumulator = MetricAccumulator()
    accumulator.update({"abs_rel": torch.tensor([0.1, 0.2], dtype=torch.float64), "psnr": torch.tensor([[20.0], [30]])})
    accumulator.update({"abs_rel": torch.tensor(0.6, dtype=torch.float64)})
    assert accumulator.counts() == {"abs_rel": 3, "psnr": 2}
    means = accumulator.means()
    assert math.isclose(means["abs_rel"], 0.3) and means["psnr"] == 25.0


def test_markdown_table_has_readable_headings_and_marks_missing_cells():
    table = format_markdown_table(
        {"ours": {"abs_rel": 0.01234, "delta1": 0.98, "images": 10}, "flat plane": {"abs_rel": 0.2}}, digits=3
    )
    assert table == (
        "| method | AbsRel ↓ | δ<1.25 ↑ | images |\n"
        "|---|---|---|---|\n"
        "| ours | 0.012 | 0.980 | 10 |\n"
        "| flat plane | 0.200 | – | – |\n"
    )


def test_json_is_strict_with_non_finite_numbers_as_null(tmp_path):
    results = {"depth_to_image": {"ours": {"psnr": math.inf, "ssim": 1.0}}, "device": "cpu"}
    assert json.loads(results_to_json(results)) == {
        "depth_to_image": {"ours": {"psnr": None, "ssim": 1.0}},
        "device": "cpu",
    }
    path = write_json(tmp_path / "metrics.json", results)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert json.loads(path.read_text())["depth_to_image"]["ours"]["ssim"] == 1.0
