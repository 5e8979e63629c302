"""The ``prepare`` stage: a source's cases → normalised arrays → a store, with folds.

:mod:`.prepare` (``run_prepare``, the one flow) picks a layout strategy by the source's
``LAYOUT``: :mod:`.volumes` (BraTS NIfTI) or :mod:`.slices` (2D slice sets); the contract is
:mod:`.layout`, the shared output steps (checks, fingerprint, sidecars) are :mod:`.output`."""
