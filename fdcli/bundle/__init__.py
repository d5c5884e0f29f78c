"""The logit bundle: the on-disk format that crosses the air gap (docs/bundle-format.md).

No training code lives here: only codecs, sparse-row helpers, the manifest, and the shard
writer and reader (and :class:`TeacherRows`, a bundle read a batch of examples at a time).
"""

from .codecs import (CODECS, Codec, DenseCodec, LowRankCodec, SampleCodec, TopKCodec,
                     codec_from_spec)
from .manifest import (FORMAT_NAME, FORMAT_VERSION, BundleManifest, Producer, ShardInfo,
                       fingerprint_labels)
from .reader import (BundleReader, LogitBlock, VerifyReport, read_bundle, read_manifest,
                     verify_bundle)
from .sparse import SparseRows, index_dtype, log_softmax_rows, temper_sparse
from .teacher import TeacherRows
from .writer import BundleWriter, write_bundle

__all__ = [
    "CODECS", "Codec", "DenseCodec", "TopKCodec", "SampleCodec", "LowRankCodec", "SparseRows",
    "codec_from_spec", "index_dtype", "log_softmax_rows", "temper_sparse", "FORMAT_NAME", "FORMAT_VERSION",
    "BundleManifest", "Producer", "ShardInfo", "fingerprint_labels", "BundleReader",
    "LogitBlock", "VerifyReport", "read_bundle", "read_manifest", "verify_bundle",
    "BundleWriter", "write_bundle", "TeacherRows",
]
