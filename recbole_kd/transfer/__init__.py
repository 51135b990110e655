"""Cross-dataset transfer: a source phase (pre-training on a rich source dataset, trained once and
cached), then the target phase (the registered ``Transfer-<student>`` run) initialised from it.

Mechanisms (``transfer_mechanisms``): ``encoder`` (sequence encoder + positions; new item
embeddings), ``shared_tokens`` (rows of users/items whose raw token is in both datasets) and
``cross_kd`` (hint distillation on users present in both datasets through a learned map, EMCDR
style, added to the target's own loss). See ``recbole_kd/models/transfer.yaml``.
"""
