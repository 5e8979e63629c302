"""The ``report`` stage: learning curves, overlays and montages, ROC curves (PNG)."""
