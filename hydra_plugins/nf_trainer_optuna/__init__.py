"""nf_trainer's Optuna sweeper, found by Hydra in its `hydra_plugins` namespace (hydra/sweeper=nf_optuna)."""
