"""sglang-fair: FairBatching scheduling for SGLang."""

__version__ = "0.1.0"
