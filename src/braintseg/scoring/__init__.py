"""The ``evaluate`` stage: predictions against the truth (:mod:`.evaluate`); BraTS regions
WT/TC/ET with HD95 (:mod:`.regions`), per-patient slice Dice and slice detection
(:mod:`.slices`), tumour-type figures (:mod:`.classes`)."""
