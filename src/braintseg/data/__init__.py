"""Array conventions every layer shares (no Keras, no file formats): normalisation, crop boxes,
label conventions and views (:mod:`~braintseg.data.preprocess`), cross-validation folds
(:mod:`~braintseg.data.folds`), ids that become paths (:mod:`~braintseg.data.ids`)."""
