"""The sequence-parallel demo (``experiments/benchmarks/sequence_parallel.py``) at a tiny length on the 4 host
devices of the test session: it runs, writes its JSON and reports less memory per device than one device needs."""

import json

import pytest

from algornn.experiments.benchmarks import sequence_parallel as demo

pytestmark = pytest.mark.loose_promotion  # Flax layers


def test_demo_runs_s4d_on_four_devices(tmp_path):
    out = tmp_path / "sp.json"
    demo.main(["--length", "1024", "--mixers", "s4d", "--d-model", "4", "--d-state", "4", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["mixer"] == "s4d" and row["L"] == 1024 and row["finite"]
    assert sorted(row["dx_shard_bytes_per_device"].values()) == [1024 // 4 * 4 * 4] * 4  # (1, L/4, D) float32 each
    assert 0 < row["sharded"]["total_bytes"] < row["single_device"]["total_bytes"]


def test_demo_refuses_a_length_the_devices_cannot_split(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--length", "1001"])
    assert "--length 1001 is not divisible by --devices 4" in capsys.readouterr().err
