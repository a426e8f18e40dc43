"""Feature services: the versioned feature sets models consume, in training and in serving."""

from feast import FeatureService
from features import customer_profile

customer_segments_v1 = FeatureService(
    name="customer_segments_v1",
    features=[customer_profile],
    description="Behaviour features of the customer segmentation model, version 1.",
    tags={"model": "customer_segments"},
)
