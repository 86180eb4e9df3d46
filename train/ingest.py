"""How Ray Train hands the datasets to the workers: train split equally, eval split whole.

Ray Train's default ``DataConfig`` splits a dataset with ``streaming_split(equal=True)``,
which drops rows to give every worker the same count: right for training (every rank
must run the same number of collective steps), wrong for evaluation (a dropped
validation video changes the metrics). :class:`ShardedEvalDataConfig` splits the
evaluation datasets with ``equal=False``: every video goes to exactly one rank.
"""

from __future__ import annotations

from typing import Any

from ray.train import DataConfig


class ShardedEvalDataConfig(DataConfig):
    """``train`` split equally over the workers; ``eval_names`` split without dropping."""

    def __init__(self, train_names: list[str], eval_names: list[str]) -> None:
        super().__init__(datasets_to_split=train_names)
        self._eval_names = list(eval_names)

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        rest = {k: v for k, v in datasets.items() if k not in self._eval_names}
        output = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
        for name in self._eval_names:
            if name not in datasets:
                continue
            ds = datasets[name]
            if ds.name is None:
                ds.set_name(name)
            splits = ds.streaming_split(world_size, equal=False)
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output
