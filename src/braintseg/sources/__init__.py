"""Data sources: one module per input format, all behind the interface of :mod:`.base`.

A source finds cases in a folder, reads one into the common form and writes predictions back in
its own format; :mod:`.registry` lists them and detects which one a folder holds.  Modules:
:mod:`.brats` (BraTS NIfTI volumes), :mod:`.lgg` (LGG kaggle_3m TIFF slices), :mod:`.figshare`
(figshare MATLAB v7.3 slices), :mod:`.synthetic` (synthetic data in these formats, for tests).
"""
