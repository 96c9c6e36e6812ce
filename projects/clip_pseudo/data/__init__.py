"""CLIP + pseudo-label data tools: image-text shards, pseudo-label experts and writers."""
