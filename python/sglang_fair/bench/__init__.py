"""`sglang-fair bench`: live A/B benchmarks driven by SGLang's own bench_serving (see docs/results.md)."""
