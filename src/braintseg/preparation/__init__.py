"""The ``prepare`` stage: a source's cases → normalised arrays → a store, with folds
(:mod:`.prepare`; 2D slice layout in :mod:`.slices`)."""
