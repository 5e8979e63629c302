"""The PyTables store: writing (:mod:`.write` volumes, :mod:`.slice_writer` 2D slices), reading
(:mod:`.read`: ``open_store``, ``SliceStore``; built on :mod:`.header`, opening and shape checks,
and :mod:`.arrays`, box reads), the chunk codec and direct chunk reads (:mod:`.codec`,
:mod:`.chunks`) and block readers for training (:mod:`.readahead` threads, :mod:`.blockprocs`
worker processes)."""
