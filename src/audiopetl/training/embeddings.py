"""A frozen backbone's embeddings of a dataset, computed once and cached for the `probe`
strategy (HEAR's way of scoring an embedding): every probe run and every variant of its
sweep trains its head on them, so an epoch costs no backbone forward.

An embedding is what the model's head receives: the pooled output of the backbone (AST's
[CLS]/[DIST] mean or its mean over tokens, an encoder's mean over frames, CLAP's own
pooling), taken by a hook on the head's first module, in float32 and evaluation mode. The
cache has the feature cache's format (audiopetl.features.cachefile: parquet, a CRC32 per
page, the metadata sealed by its sha256), with one float32 row of the embedding's width per
clip, and carries its source cache's metadata (so a run checks it against its manifest as
it checks features) plus what it was computed from: the identity its name hashes, the
backbone's weights (their files' sha256), the feature cache's sha256 and the libraries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm import tqdm

from audiopetl.core.atomic import atomic_path
from audiopetl.core.checksums import file_sha256
from audiopetl.core.embedding import EmbeddingSettings
from audiopetl.core.errors import DataError, TrainingError
from audiopetl.core.settings import thaw
from audiopetl.features import cachefile
from audiopetl.features.cache import library_versions, read_metadata
from audiopetl.models.backbones import DEFAULT_KIND, KIND_ATTRIBUTE, get_backbone
from audiopetl.models.build import build_model
from audiopetl.models.hub import weights_record
from audiopetl.training.determinism import make_deterministic, seed_everything, select_device

log = logging.getLogger(__name__)
DTYPE = "float32"


def head_input(model: nn.Module) -> nn.Module:
    """The first module of a model's head (its LayerNorm): its input is the embedding."""
    layout = get_backbone(getattr(model, KIND_ATTRIBUTE, DEFAULT_KIND)).layout()
    return model.get_submodule(layout.head[0])


class Embedder:
    """A model's backbone, frozen and in evaluation mode, giving its head's input."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.taken: list[torch.Tensor] = []
        self.hook = head_input(model).register_forward_pre_hook(self._take)

    def remove(self) -> None:
        """Stop taking the head's input (the model goes on to train or run its head)."""
        self.hook.remove()

    def _take(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.taken.append(args[0].detach())

    @torch.no_grad()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        self.taken.clear()
        self.model(input_values=features.to(self.device).float())
        if len(self.taken) != 1:
            raise TrainingError(
                f"the model's head was called {len(self.taken)} times in one forward pass: "
                "its input is not one embedding per clip"
            )
        return self.taken[0].float().cpu()


def build_embeddings(settings: EmbeddingSettings, progress: bool = False) -> Path:
    """Embed every clip of the feature cache ``settings.cache`` and write the embedding cache
    ``settings.out`` atomically (a row group of the feature cache in memory at a time)."""
    if settings.pretrained is None:
        raise TrainingError(
            f"models.{settings.model.name}: a probe needs pretrained weights (`pretrained` or a "
            "`pretrain` block): a random backbone's embeddings would depend on the seed"
        )
    device = select_device(settings.device)
    make_deterministic(0, settings.threads, settings.deterministic, device)
    source = read_metadata(settings.cache)
    # The head is built and never used: the embedding is its input.
    seed_everything(0)
    model = build_model(
        settings.model, settings.features, len(source["class_names"]), settings.pretrained
    )
    embed = Embedder(model, device)
    parquet = pq.ParquetFile(settings.cache, page_checksum_verification=True)
    rows = parquet.metadata.num_rows
    writer: pq.ParquetWriter | None = None
    width = 0
    bar = tqdm(total=rows, desc=f"embed {settings.dataset}", unit="clip", disable=not progress)
    with atomic_path(settings.out, ".parquet") as tmp, bar:
        try:
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                values = cachefile.feature_values(table, source["shape"], source["dtype"])
                cachefile.check_finite(settings.cache, table, values, source)
                parts = []
                for start in range(0, len(values), settings.batch_size):
                    batch = torch.from_numpy(values[start : start + settings.batch_size].copy())
                    parts.append(embed(batch).numpy())
                    bar.update(len(batch))
                embedded = np.ascontiguousarray(np.concatenate(parts), dtype=DTYPE)
                if not np.isfinite(embedded).all():
                    raise TrainingError(
                        f"{settings.cache}: the model {settings.model.name} gives non-finite "
                        "embeddings; its weights or the features hold NaN or Inf"
                    )
                if writer is None:
                    width = embedded.shape[1]
                    writer = pq.ParquetWriter(
                        tmp,
                        cachefile.schema(width, np.dtype(DTYPE).itemsize),
                        compression="zstd",
                        write_page_checksum=True,
                        use_dictionary=["clip_id", "group"],
                    )
                column = pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(embedded.itemsize * width),
                    len(embedded),
                    [None, pa.py_buffer(embedded.tobytes())],
                )
                writer.write_table(table.set_column(5, "features", column))
        except (OSError, pa.ArrowException) as err:
            raise DataError(
                f"{settings.cache}: the feature cache is damaged ({str(err).splitlines()[0]}); "
                f"{cachefile.rebuild_hint(settings.dataset)}"
            ) from err
        if writer is None:
            raise DataError(f"{settings.cache}: the feature cache holds no clip")
        metadata = {
            **source,
            "shape": [1, width],
            "dtype": DTYPE,
            "embedding": {
                "identity": thaw(settings.identity),
                "path": str(settings.out),
                "model": settings.model.name,
                "weights": weights_record(settings.pretrained, settings.model.revision),
                "cache": str(settings.cache),
                "cache_sha256": file_sha256(settings.cache),
                "versions": library_versions(),
            },
        }
        writer.add_key_value_metadata({cachefile.META_KEY: cachefile.seal(metadata)})
        writer.close()
    log.info("%s: %d clips embedded, %d values each", settings.out, rows, width)
    return settings.out


def check_embeddings(metadata: dict[str, Any], weights: dict[str, Any]) -> None:
    """A run's embedding cache must come from the weights the run starts from (a pretraining
    that ran again makes other embeddings)."""
    recorded = metadata.get("embedding")
    path = (recorded or {}).get("path", "the embedding cache")
    if recorded is None:
        raise TrainingError(f"{path}: a feature cache, not an embedding cache")
    if recorded.get("weights") != weights:
        raise TrainingError(
            f"{path}: computed from other weights than the run starts from; rebuild it: "
            f"`audiopetl embed --dataset {metadata.get('dataset')} --model "
            f"{recorded.get('model')}` (the workflow does when the weights change)"
        )
