"""Sample-quality metrics (FID, KID, IS, precision/recall) through torch-fidelity, and the feature
extractors they run on: the standard Inception-v3 and an offline proxy CNN madkit trains itself.

Every result names its extractor: a FID computed on proxy features is a different number from
Inception FID and is reported as such (``{"fid": ..., "extractor": "openmoji-proxy-1a2b3c4d"}``).
"""
