"""``braintseg demo``: the whole pipeline on the bundled sample data (BraTS :mod:`.demo`,
LGG :mod:`.lgg`)."""
