"""OpenELM's data tools: tokenizer training, token shards, the Shakespeare corpus."""
