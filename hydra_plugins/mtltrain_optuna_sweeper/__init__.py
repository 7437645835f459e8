"""mtltrain's Optuna sweeper: `hydra/sweeper=mtltrain_optuna` (conf/hydra/sweeper/), over
Optuna's ask-and-tell API (Optuna 4 and 5, SQLAlchemy 2).

Per batch of `n_jobs` trials: ask the study for trials with the search space's values
(`_search_space`), launch them as jobs numbered as their trials, and tell the study each one's
objective (COMPLETE), or that its run failed (FAIL) or its pruner stopped it (PRUNED: the run
reports its objective at each evaluation, `mtltrain.loop._pruning`). More failures in a batch
than `max_failure_rate` of it stop the study with the first one's error. With `storage` the
study is kept there and the same command continues it; the best trial so far is written to
the sweep folder's optimization_results.yaml.
"""
