"""Sharing trained models: exports, model cards, the hub, and importing the authors' released checkpoint.

    export.py            writing an export folder (madkit export); reading it is checkpoints/export_format.py
    model_card.py        the README.md of an export
    hub.py               hub ids -> local export folders, and uploads
    reference_import.py  the MADFormer authors' checkpoint -> a madkit checkpoint (madkit import-reference)
"""
