"""The ``evaluate`` stage: predictions against the truth.  One flow (:mod:`.evaluate`) and a
scoring per data layout: :mod:`.volumes` (BraTS regions WT/TC/ET with HD95, figures in
:mod:`.regions`) and :mod:`.slices` (per-patient and pooled Dice, slice detection and ROC in
:mod:`.detection`, tumour types in :mod:`.classes`); the files both write (:mod:`.output`)."""
