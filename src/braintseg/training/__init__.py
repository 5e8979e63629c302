"""Training: the ``train`` stage (:mod:`.train`), the fit loop and its callbacks, checkpoints and
run folders, stop signals' handling, distribution over devices and processes
(:mod:`.distribute`), the batch generator and augmentation, losses and metrics."""
