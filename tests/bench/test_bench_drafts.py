"""bench.bench_drafts on the bundled model: the same checkpoint twice gives identical
figures and a paired difference of exactly zero; a checkpoint with another tokenizer
is refused by name."""
import json
import shutil

import pytest

from bench import bench_drafts
from tridiff import models


def test_same_checkpoint_twice_is_a_zero_paired_difference(tmp_path, capsys):
    bench_drafts.main([models.path(), models.path(), "--prefixes", "3", "--out", str(tmp_path)])
    rows = [json.loads(line) for line in (tmp_path / "drafts.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["prefixes"] == 3
    assert rows[0]["real_prefixes"] == rows[1]["real_prefixes"]
    assert rows[0]["vs_first"] == {} and set(rows[1]["vs_first"]) == {
        f"linear_L{L}_accepted{t}" for L in (16, 32) for t in ("", "_no_adapter")}
    assert all(v == {"diff": 0.0, "stderr": 0.0} for v in rows[1]["vs_first"].values())
    assert 1.0 <= rows[0]["real_prefixes"]["linear_L16_accepted"] <= 16.0


def test_paired_difference_and_its_standard_error():
    mean, se = bench_drafts.paired([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 5.0, 4.0])
    assert mean == pytest.approx(0.75) and se == pytest.approx((0.9166666666666666 / 4) ** 0.5)


def test_another_tokenizer_is_refused(tmp_path):
    other = tmp_path / "other"
    shutil.copytree(models.path(), other)
    (other / "tokenizer.json").write_text("{}")
    with pytest.raises(SystemExit, match="another tokenizer"):
        bench_drafts.main([models.path(), str(other), "--prefixes", "2", "--out", str(tmp_path)])
