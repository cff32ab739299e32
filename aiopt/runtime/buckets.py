"""The batch buckets of a torch-cuda artifact (export/torch_cuda.py builds them; the runtime
reads them): which buckets it records, and which bucket serves a batch."""
from __future__ import annotations

from aiopt.errors import InputError

REEXPORT_HINT = "re-export it with aiopt export --format torch-cuda --batch-size N"


def buckets_of(metadata: dict) -> tuple[int, ...] | None:
    """The batch buckets a torch-cuda artifact was built for; None for any other artifact."""
    recorded = (metadata.get("torch_cuda") or {}).get("batch_sizes")
    return tuple(sorted(int(b) for b in recorded)) if recorded else None


def bucket_for(batch: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `batch` (the batch is padded up to it)."""
    for bucket in buckets:
        if batch <= bucket:
            return bucket
    raise InputError(f"batch size {batch} is above this artifact's largest bucket ({buckets[-1]}); "
                     f"re-export it with --batch-size {batch} (buckets: {', '.join(map(str, buckets))})")
