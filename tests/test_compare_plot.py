"""The frontier plot labels every point legibly: label boxes clear of each other, of the markers and of the legend."""
from __future__ import annotations

import itertools
import math

from rlhf_exp.compare import RunRecord, _overlap, place_labels, plot_frontier


def test_labels_of_a_tight_cluster_do_not_overlap_each_other_or_any_marker():
    # Six points within 12 pixels of each other, two apart; labels 60 x 14 pixels.
    points = [(300 + 5 * i, 200 + 2 * (i % 3)) for i in range(6)] + [(100, 100), (500, 300)]
    sizes = [(60, 14)] * len(points)
    legend = (440, 40, 590, 140)
    boxes = place_labels(points, sizes, (50, 30, 600, 400), obstacles=[legend])
    for a, b in itertools.combinations(boxes, 2):
        assert _overlap(a, b) == 0.0
    for box in boxes:
        assert _overlap(box, legend) == 0.0 and 50 <= box[0] and box[2] <= 600 and 30 <= box[1] and box[3] <= 400
        for x, y in points:
            assert _overlap(box, (x - 7, y - 7, x + 7, y + 7)) == 0.0
    for (x, y), box in zip(points, boxes):  # near its own point
        assert math.dist((x, y), ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)) < 160


def test_frontier_of_eleven_crowded_objectives_renders(tmp_path):
    import matplotlib.image

    names = ["ppo", "ppo_seq", "reinforce", "kl_reinforce", "token_reinforce", "grpo", "rloo", "reinforce_pp",
             "sft", "dpo", "kto"]
    aggs = [{"objective": n, "kl": "fixed", "n": 3, "eval/kl_mean": 4.0 + 0.2 * i, "eval/kl_std": 0.3,
             "eval/reward_mean_mean": 2.8 + 0.02 * (i % 4), "eval/reward_mean_std": math.nan,
             "label": f"{n} fixed kl_coef=0.1"} for i, n in enumerate(names)]
    runs = [RunRecord(name="a", source="", status="finished", summary={"eval/reward_mean_start": 0.4})]
    path = tmp_path / "frontier.png"
    plot_frontier(aggs, runs, path, "synthetic")
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 500 and img.shape[1] > 800
