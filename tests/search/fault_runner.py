"""``resnext-nas`` with a fault injected from outside: a real process, real exit status, real stores.

Used by tests/search/test_failures.py. Arguments are those of ``resnext-nas``. Environment:

    FAULT_FAIL_TRIALS=1,3     these trials raise RuntimeError("injected fault ...") while evaluating
    FAULT_LOSE_TRIALS=2       these trials are failed as lost while they train, as a process that missed
                              their heartbeats does (Optuna's stale-trial check: the state only)
    FAULT_AS_HEADROOM_MB=N    cap the address space at its size after start-up + N MiB, so a network
                              that needs more fails to allocate, as on a machine out of memory
"""

import os
import resource
import sys


def address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main() -> int:
    # Everything a study run imports, first: the cap is about what trials allocate.
    import matplotlib.pyplot  # noqa: F401
    import sklearn.model_selection  # noqa: F401  (search.data imports it where a split is made)

    import search.cli
    import search.export  # noqa: F401
    import search.objective
    import search.plots  # noqa: F401
    import search.study  # noqa: F401
    import search.tracking  # noqa: F401  (mlflow: search.results imports it for type hints only)

    failing, losing = ({int(n) for n in os.environ.get(f"FAULT_{what}_TRIALS", "").split(",") if n}
                       for what in ("FAIL", "LOSE"))
    if failing or losing:
        from optuna.storages._cached_storage import _CachedStorage
        from optuna.trial import TrialState

        evaluate = search.objective.Objective._evaluate

        def faulty(self, trial, spec, cx):
            if trial.number in failing:
                raise RuntimeError(f"injected fault in trial {trial.number}")
            if trial.number in losing:  # behind the study's cache, as another process writes
                storage = trial.study._storage
                storage = storage._backend if isinstance(storage, _CachedStorage) else storage
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            return evaluate(self, trial, spec, cx)

        search.objective.Objective._evaluate = faulty

    headroom = os.environ.get("FAULT_AS_HEADROOM_MB")
    if headroom:
        limit = address_space() + int(headroom) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return search.cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
