"""What mmseg 1.2.2's own tools (``<site-packages>/mmseg/.mim/tools/``) need from a config's dataset and
visualizer and mmseg's classes do not give; registered in mmseg by ``mmseg_plugin``."""
import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.visualization import SegLocalVisualizer


class MetainfoSegDataset(BaseSegDataset):
    """mmseg's ``BaseSegDataset`` (images and label maps in two folders) that also answers ``METAINFO`` with the
    ``metainfo`` its config gives (classes, palette).

    mmseg's ``tools/analysis_tools/confusion_matrix.py`` reads the class names from ``dataset.METAINFO``, which a
    ``BaseSegDataset`` leaves empty (only the dataset classes with built-in names, such as ``ADE20KDataset``,
    define it): ``KeyError: 'classes'``. The attribute is set on the instance, so that the class's own
    ``METAINFO``, the base of every instance's ``metainfo``, stays empty.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.METAINFO = self.metainfo


class ContiguousSegLocalVisualizer(SegLocalVisualizer):
    """mmseg's ``SegLocalVisualizer`` that draws on a C-contiguous copy of the image.

    OpenCV draws the class names only on C-contiguous arrays, and ``SegLocalVisualizer`` draws them on an array
    of the image's memory layout; mmseg's ``tools/analysis_tools/browse_dataset.py`` (and ``misc/``'s) hands it
    a channel-reversed view of the loaded tensor: ``cv2.error: ... in function 'rectangle'``.
    """

    def add_datasample(self, name: str, image: np.ndarray, *args, **kwargs) -> None:
        super().add_datasample(name, np.ascontiguousarray(image), *args, **kwargs)
