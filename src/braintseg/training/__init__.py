"""Training: the ``train`` stage (:mod:`.train`), the fit loop and its callbacks, checkpoints and
run folders, stop signals' handling, distribution over devices and processes
(:mod:`.distribute`, the one entry; its parts :mod:`.devices` and :mod:`.shards`), the batch
generator (:mod:`.generator`, with :mod:`.plan` and :mod:`.prefetch`) and augmentation, losses
and metrics."""
