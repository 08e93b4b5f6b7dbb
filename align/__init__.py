"""Stage 2: train lightweight alignment heads on cached backbone features with a contrastive loss."""
