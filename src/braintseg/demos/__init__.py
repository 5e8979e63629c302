"""``braintseg demo``: the whole pipeline on the bundled sample data (:mod:`.demo`: the entry
point and the data sets by name; :mod:`.flow`: the shared steps; :mod:`.brats`, :mod:`.lgg`: one
:class:`~braintseg.demos.flow.DemoSpec` each)."""
