"""VLM2Vec: fine-tune a vision-language model into an embedding model (last-token pooling, InfoNCE, GradCache)."""
