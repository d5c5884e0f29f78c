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

#: public name -> the module that defines it; resolved on first use (module ``__getattr__``),
#: so that ``import fdcli`` (and ``fd --version``) loads neither torch nor transformers.
_LAZY = {
    **dict.fromkeys(["BundleManifest", "BundleReader", "BundleWriter", "DenseCodec",
                     "LogitBlock", "LowRankCodec", "SampleCodec", "SparseRows", "TopKCodec",
                     "VerifyReport", "codec_from_spec", "fingerprint_labels", "read_bundle",
                     "read_manifest", "verify_bundle", "write_bundle"], ".bundle"),
    **dict.fromkeys(["BundleError", "FdError", "IncompatibleBundlesError"], ".errors"),
    "aggregate": ".stages.aggregate", "distill": ".stages.distill",
    "emit_logits": ".stages.emit", "evaluate": ".stages.evaluate",
    "membership_inference": ".stages.evaluate",
    **dict.fromkeys(["distill_lm", "emit_token_logits", "evaluate_lm", "train_lm_specialist"],
                    ".stages.lm"),
    "partition": ".stages.partition", "simulate": ".stages.simulate",
    "simulate_lm": ".stages.simulate_lm", "train_specialist": ".stages.train_specialist",
    **dict.fromkeys(["distill_seq2seq", "emit_seq2seq_logits", "evaluate_seq2seq",
                     "generate_targets", "train_seq2seq_specialist"], ".stages.seq2seq"),
    "simulate_seq2seq": ".stages.simulate_seq2seq",
    **dict.fromkeys(["distill_embedding", "emit_embedding_logits", "evaluate_embedding"],
                    ".stages.embedding"),
    "simulate_embedding": ".stages.simulate_embedding",
    "TASKS": ".tasks", "FdMeta": ".meta", "Score": ".results", "read_scores": ".results",
    "generate_responses": ".stages.chat", "fedavg_lora": ".stages.lora_fedavg",
    **dict.fromkeys(["LoraSpec", "Tuning"], ".adapters"),
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fdcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__", "FdError", "BundleError", "IncompatibleBundlesError", "BundleManifest",
    "BundleReader", "BundleWriter", "LogitBlock", "VerifyReport", "SparseRows", "DenseCodec",
    "TopKCodec", "SampleCodec", "LowRankCodec", "codec_from_spec", "fingerprint_labels",
    "read_bundle", "read_manifest", "verify_bundle", "write_bundle", "train_specialist",
    "emit_logits", "aggregate", "distill", "evaluate", "membership_inference", "partition",
    "simulate",
    "train_lm_specialist", "emit_token_logits", "distill_lm", "evaluate_lm", "simulate_lm",
    "train_seq2seq_specialist", "emit_seq2seq_logits", "generate_targets", "distill_seq2seq",
    "evaluate_seq2seq", "simulate_seq2seq",
    "emit_embedding_logits", "distill_embedding", "evaluate_embedding", "simulate_embedding",
    "TASKS", "FdMeta", "Score", "read_scores", "generate_responses", "fedavg_lora",
    "LoraSpec", "Tuning",
]
