"""Built-in data sources: ``openmoji`` (embedded default), ``folder``, ``hf-disk``, ``webdataset``.

Every source yields ``(image, label)`` with image float32 [3, H, W] in [-1, 1] and label an int
(0 when unconditional). Config classes compute ``image_shape()`` and ``num_classes()`` from the
spec alone, so a model is sized at validation time without reading images.
"""
