"""Instruction tuning of OpenELM releases: WordNet chat data, chat template, packing, LoRA (peft) or full
fine-tuning through ``corefm train``, merged and adapter releases (projects/openelm/README.md)."""
