"""Training data: the dataset a run reads (raw images or cached latents) and the order of its batches.

    training_data.py   the dataset a run trains on (train.latent_cache decides raw or encoded)
    latent_cache.py    encoding a data source once into latents on disk, and reading them back
    batches.py         micro-batches per rank in an order that depends only on (seed, images consumed)
"""
