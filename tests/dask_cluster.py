"""What the Dask runner tests share: the random-init model every worker builds, and a real 2-process cluster."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any


def tiny_vit() -> Any:
    """The same random-init ViT-Ti/16 in every process (pickled by value to the workers)."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, num_classes=0).eval()


def local_client() -> Iterator[Any]:
    """A client of a real ``LocalCluster`` of 2 worker processes, one thread each (closed after)."""
    import cloudpickle
    from distributed import Client, LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           memory_limit=0, env={"OMP_NUM_THREADS": "1"})
    with Client(cluster) as held:
        yield held
    cluster.close()
