"""Release folders (safetensors + config + model card) and pushing them to the Hugging Face Hub."""
