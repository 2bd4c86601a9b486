"""Feature extractors: ``inception`` (torch-fidelity's inception-v3-compat) and ``proxy`` (a small
CNN trained on a data source's labels, for offline machines and data Inception knows nothing about)."""
