"""One evaluator for every model: zero-shot classification, retrieval, Winoground, MMVP-VLM, MMEB, kNN."""
