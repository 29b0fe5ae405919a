"""Input representations: the DCT, streaming statistics and the model's input stems."""

from animeprov.transforms.dct import dct2, dct_matrix, idct2
from animeprov.transforms.stats import RunningMeanStd
from animeprov.transforms.stem import DCTStem, PixelStem, create_stem, fit_stem_statistics

__all__ = [
    "DCTStem",
    "PixelStem",
    "RunningMeanStd",
    "create_stem",
    "dct2",
    "dct_matrix",
    "fit_stem_statistics",
    "idct2",
]
