import pytest

from search.config import experiment_from_dict


def tiny_raw(tmp_path, **sections) -> dict:
    """A study small enough to run a few trials in seconds on the CPU, stores under tmp_path."""
    raw = {
        "data": {"dataset": "synthetic", "val_fraction": 0.25},
        "space": {"num_stages": [1, 2], "stem_ch": [4, 8], "bottleneck_ch": [4, 8], "channel_mult": 2,
                  "cardinality": [1, 2], "base_width": [16], "depth": [1]},
        "objectives": ["val_accuracy", "params", "latency_ms"],
        "search": {"n_trials": 4, "seed": 0, "sampler": "random",
                   "storage": f"sqlite:///{tmp_path}/optuna.db"},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        "latency": {"repeats": 3, "warmup": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "artifacts": str(tmp_path / "artifacts")},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    return raw


@pytest.fixture
def tiny(tmp_path):
    def make(name="tiny", **sections):
        return experiment_from_dict(tiny_raw(tmp_path, **sections), name=name)
    return make
