"""CatLIP (arXiv 2404.15653): image-text pretraining recast as multi-label classification over
WordNet synsets. So far only the caption labels (labels.py, on the WordNet reader wordnet.py);
nothing is declared in pyproject.toml yet.
"""
