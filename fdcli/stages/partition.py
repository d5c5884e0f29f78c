"""fd partition: split a labelled dataset into a global test split, a proxy split, a labelled
validation split and N client datasets with a Dirichlet(alpha) label split (flwr_datasets'
DirichletPartitioner)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..data import DataError, label_ids, load_local, resolve
from ..outputs import atomic_dir

LABEL = "label"


def partition(data: str | Path, out: str | Path, *, num_clients: int = 5, alpha: float = 1.0,
              proxy_fraction: float = 0.2, test_fraction: float = 0.2,
              validation_fraction: float = 0.1, min_client_size: int = 5,
              text_column: str | None = None, image_column: str | None = None,
              label_column: str | None = None, split: str | None = None, seed: int = 0,
              overwrite: bool = False, dataset=None) -> dict[str, Any]:
    """Write ``out/test`` (no client sees it), ``out/proxy`` (inputs only, shared by everyone),
    ``out/proxy-labels`` (the same rows with labels, for evaluation only),
    ``out/validation`` (labelled, held out from the clients, the proxy and the test split: for
    every choice a study makes, so that the test split scores only the final models; none
    with ``validation_fraction=0``), ``out/client-<i>`` and ``out/partition.json``. Each is a
    ``save_to_disk`` folder with columns ``input`` kind name (``text`` or ``image``) and
    ``label`` (a ClassLabel). The test and proxy rows do not depend on
    ``validation_fraction``: the validation rows come out of the clients' pool."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    if num_clients < 1 or not alpha > 0:
        raise ValueError("num_clients must be >= 1 and alpha > 0")
    if not (0 < proxy_fraction < 1 and 0 < test_fraction < 1 and 0 <= validation_fraction < 1
            and proxy_fraction + test_fraction + validation_fraction < 1):
        raise ValueError(f"proxy_fraction and test_fraction must be in (0, 1), "
                         f"validation_fraction in [0, 1), and the three must sum below 1; got "
                         f"{proxy_fraction}, {test_fraction} and {validation_fraction}")
    ds = dataset if dataset is not None else load_local(data, split)
    spec = resolve(ds, str(data), text_column=text_column, image_column=image_column,
                   label_column=label_column)
    features = datasets.Features({
        spec.kind: datasets.Image() if spec.kind == "image" else datasets.Value("string"),
        LABEL: datasets.ClassLabel(names=spec.label_names)})
    table = datasets.Dataset.from_dict(
        {spec.kind: list(ds[spec.input_column]), LABEL: label_ids(ds, spec)}, features=features)
    table = table.shuffle(seed=seed).flatten_indices()
    n_test = int(round(len(table) * test_fraction))
    n_proxy = int(round(len(table) * proxy_fraction))
    n_val = int(round(len(table) * validation_fraction))
    test = table.select(range(n_test))
    proxy = table.select(range(n_test, n_test + n_proxy))
    held = n_test + n_proxy + n_val
    validation = table.select(range(n_test + n_proxy, held))
    pool = table.select(range(held, len(table)))
    if len(pool) < num_clients * min_client_size:
        raise DataError(f"{data}: {len(pool)} examples left for {num_clients} clients; need "
                        f"at least {min_client_size} each")
    partitioner = DirichletPartitioner(num_partitions=num_clients, partition_by=LABEL,
                                       alpha=alpha, min_partition_size=min_client_size,
                                       self_balancing=False, seed=seed)
    partitioner.dataset = pool
    clients = [partitioner.load_partition(i) for i in range(num_clients)]
    names = spec.label_names
    report = {"fd_version": __version__, "stage": "partition", "kind": spec.kind,
              "label_names": names,
              "config": {"data": str(data), "num_clients": num_clients, "alpha": alpha,
                         "proxy_fraction": proxy_fraction, "test_fraction": test_fraction,
                         "validation_fraction": validation_fraction,
                         "min_client_size": min_client_size, "seed": seed},
              "sizes": {"test": len(test), "proxy": len(proxy), "validation": len(validation),
                        "clients": [len(c) for c in clients]},
              "client_label_histograms": [
                  {names[i]: n for i, n in sorted(Counter(c[LABEL]).items())} for c in clients]}
    with atomic_dir(out, overwrite) as tmp:
        test.save_to_disk(str(tmp / "test"))
        proxy.remove_columns([LABEL]).save_to_disk(str(tmp / "proxy"))
        proxy.save_to_disk(str(tmp / "proxy-labels"))
        if len(validation):
            validation.save_to_disk(str(tmp / "validation"))
        for i, c in enumerate(clients):
            c.save_to_disk(str(tmp / f"client-{i}"))
        (tmp / "partition.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
