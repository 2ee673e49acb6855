"""`distil tune`: Optuna studies over a run's settings (`distil.tune.study`)."""
