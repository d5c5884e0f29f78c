"""fd: federated distillation for open foundation models.

Institutions train specialists on private data, emit compressed logits on a shared proxy set
as *logit bundles*, and a coordinator aggregates them and distills a student. This package is
the library; ``fd`` (``fdcli.cli``) is a thin command line over it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fdcli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .bundle import (BundleManifest, BundleReader, BundleWriter, DenseCodec, LogitBlock,
                     LowRankCodec, SampleCodec, SparseRows, TopKCodec, VerifyReport,
                     codec_from_spec, fingerprint_labels, read_bundle, read_manifest,
                     verify_bundle, write_bundle)
from .errors import BundleError, FdError, IncompatibleBundlesError
from .stages.aggregate import aggregate
from .stages.distill import distill
from .stages.emit import emit_logits
from .stages.evaluate import evaluate, membership_inference
from .stages.lm import distill_lm, emit_token_logits, evaluate_lm, train_lm_specialist
from .stages.partition import partition
from .stages.simulate import simulate
from .stages.simulate_lm import simulate_lm
from .stages.train_specialist import train_specialist

__all__ = [
    "__version__", "FdError", "BundleError", "IncompatibleBundlesError", "BundleManifest",
    "BundleReader", "BundleWriter", "LogitBlock", "VerifyReport", "SparseRows", "DenseCodec",
    "TopKCodec", "SampleCodec", "LowRankCodec", "codec_from_spec", "fingerprint_labels",
    "read_bundle", "read_manifest", "verify_bundle", "write_bundle", "train_specialist",
    "emit_logits", "aggregate", "distill", "evaluate", "membership_inference", "partition",
    "simulate",
    "train_lm_specialist", "emit_token_logits", "distill_lm", "evaluate_lm", "simulate_lm",
]
