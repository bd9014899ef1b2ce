"""Feature engineering: point-in-time transforms, the FeatureSpec and the Ray Data pipeline."""

from rayrec.features.pipeline import FeaturesConfig, FeaturesResult, features_root, run_features, summary
from rayrec.features.pointintime import ITEM_FEATURES, USER_FEATURES, item_pass, user_pass
from rayrec.features.spec import FeatureSpec, SpecPartial

__all__ = [
    "ITEM_FEATURES",
    "USER_FEATURES",
    "FeatureSpec",
    "FeaturesConfig",
    "FeaturesResult",
    "SpecPartial",
    "features_root",
    "item_pass",
    "run_features",
    "summary",
    "user_pass",
]
