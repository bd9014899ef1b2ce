"""Feature engineering: point-in-time transforms, the FeatureSpec and the Ray Data pipeline."""

from rayrec.features.pointintime import ITEM_FEATURES, USER_FEATURES, item_pass, user_pass
from rayrec.features.spec import FeatureSpec, SpecPartial

__all__ = ["ITEM_FEATURES", "USER_FEATURES", "FeatureSpec", "SpecPartial", "item_pass", "user_pass"]
