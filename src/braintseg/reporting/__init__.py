"""The ``report`` stage: learning curves and ``show`` (:mod:`.report`, the entry), pictures of
predictions per data layout (:mod:`.volumes`: overlays per case; :mod:`.slices`: montages per
patient and ROC curves), drawing helpers (:mod:`.figures`)."""
