"""Models: snippet encoders, the localization heads (G-TAD, BMN, ActionFormer) and their interface, their registries,
classifiers, the TAL models, targets and losses."""
from .classifiers import ClipClassifier, VideoClassifier
from .encoder import R2Plus1DEncoder, TSMEncoder, temporal_shift
from .gcnext import GCNeXt
from .gtad import GTAD, valid_mask
from .losses import gtad_loss
from .registry import ENCODERS, HEADS, build_encoder, encoder_from_config, head_from_config
from .targets import build_targets
from .weights import convert_mmaction2_tsm, load_encoder_weights

__all__ = ["ClipClassifier", "VideoClassifier", "ENCODERS", "HEADS", "R2Plus1DEncoder", "TSMEncoder", "build_encoder",
           "encoder_from_config", "head_from_config", "temporal_shift", "GCNeXt", "GTAD", "valid_mask", "gtad_loss",
           "build_targets", "convert_mmaction2_tsm", "load_encoder_weights"]
