"""Training: the jitted steps, the loop, checkpoints, evaluation and what a run records.

Modules: steps (pure train / eval step functions), train (`train_and_evaluate`, the loop),
evaluation (metrics of a model on a split), checkpointing (Orbax; a run directory's layout),
sharding and distributed (data parallelism over devices and hosts), metrics (UAR / WAR /
confusion), results (results.json). The workdir lock is the shared `former_dfer_jax.run_lock`.
"""
