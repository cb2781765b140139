"""Models: snippet encoders, the G-TAD head, classifiers, targets and losses."""
from .classifiers import ClipClassifier, VideoClassifier
from .encoder import ENCODERS, R2Plus1DEncoder, TSMEncoder, build_encoder, temporal_shift
from .gcnext import GCNeXt
from .gtad import GTAD, valid_mask
from .losses import gtad_loss
from .targets import build_targets
from .weights import convert_mmaction2_tsm, load_encoder_weights

__all__ = ["ClipClassifier", "VideoClassifier", "ENCODERS", "R2Plus1DEncoder", "TSMEncoder", "build_encoder",
           "temporal_shift", "GCNeXt", "GTAD", "valid_mask", "gtad_loss", "build_targets", "convert_mmaction2_tsm",
           "load_encoder_weights"]
