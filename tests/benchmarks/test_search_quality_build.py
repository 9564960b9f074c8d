"""The search-quality table build: a build cut short resumes where it stopped, and the table carries
its own seed noise. A tiny space on digits (3 networks, 2 epochs) keeps it to seconds."""

import json

import pytest

from benchmarks import search_quality

TINY = ("data.val_fraction=0.4", "space.num_stages=[2]", "space.stem_ch=[8]", "space.bottleneck_ch=[8]",
        "space.cardinality=[1,2,4]", "space.base_width=[4]", "space.depth={low: 1, high: 1}",
        "train.epochs=2", "latency.repeats=3", "latency.warmup=1")


@pytest.mark.slow
def test_build_resumes_a_partial_table_and_records_seed_noise(tmp_path):
    out = tmp_path / "table.json"
    search_quality.build(out, TINY, jobs=1, noise_nets=2, noise_seeds=3)
    full = json.loads(out.read_text())
    assert not full["partial"]
    trained = [r for r in full["rows"] if "curve" in r]
    assert len(trained) == 3 and all(len(r["curve"]) == 2 and r["latency_ms"] > 0 for r in trained)
    noisy = [r for r in trained if "seeds" in r]
    assert len(noisy) == 2 and all(sorted(r["seeds"]) == ["0", "1", "2"] for r in noisy)
    assert all(r["seeds"]["0"] == r["curve"][-1] for r in noisy)

    # cut it short: one network and one extra seed are missing, the rest must be kept as they are
    gone = next(r for r in trained if "seeds" not in r)
    cut = dict(full, partial=True, rows=[r for r in full["rows"] if r["hash"] != gone["hash"]])
    del next(r for r in cut["rows"] if "seeds" in r)["seeds"]["2"]
    out.write_text(json.dumps(cut))
    kept = {r["hash"]: r for r in json.loads(out.read_text())["rows"]}
    search_quality.build(out, TINY, jobs=1, noise_nets=2, noise_seeds=3)
    again = json.loads(out.read_text())
    assert not again["partial"]
    rows = {r["hash"]: r for r in again["rows"]}
    assert set(rows) == {r["hash"] for r in full["rows"]}
    for h, row in kept.items():  # not retrained: the timing of each kept network is the recorded one
        assert row.get("train_time_s") == rows[h].get("train_time_s")
    assert rows[gone["hash"]]["curve"] and rows[gone["hash"]]["latency_ms"] > 0
    assert all(sorted(r["seeds"]) == ["0", "1", "2"] for r in rows.values() if "seeds" in r)
    assert again["build_s"] >= full["build_s"]

    with pytest.raises(SystemExit, match="another recipe"):  # never mixes two recipes in one table
        search_quality.build(out, TINY[:-3] + ("train.epochs=3",), jobs=1)
