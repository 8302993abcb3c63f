"""Where a competition's masks (and, for volumes, its images) come from: one source a module, registered by name in
``SOURCES`` and chosen by the config (``data.mask_source``, or inferred from the data keys set: ``base.infer``).

- ``mask_folder``: a folder of mask images named like the train images (``data.train_masks``);
- ``rle_csv``: an RLE csv, one row per image or per image and class, no row for an empty mask (``data.train_csv``);
- ``instance_maps``: one label map per image, 0 the background, 1..N its objects (``data.instances.labels``);
- ``object_rows``: an RLE csv with one row per object (``data.instances.csv``);
- ``volumes``: NIfTI volumes and label volumes seen as slices (``data.volumes``), images included.

``segkit.data.Competition`` is the front the stages use; it asks its source for masks. A new shape of data is a
module here with a ``MaskSource`` subclass and its ``@SOURCES.register``, named by ``data.mask_source`` (extra
settings in ``data.mask_options``).
"""

from segkit.data.sources import instance_maps, mask_folder, object_rows, rle_csv, volumes  # noqa: F401  (register)
from segkit.data.sources.base import SOURCES, MaskSource, ObjectSource, infer, source_class, source_for

__all__ = ["SOURCES", "MaskSource", "ObjectSource", "infer", "source_class", "source_for"]
