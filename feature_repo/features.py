"""Feature views."""

from datetime import timedelta

from data_sources import customer_profile_push
from entities import customer
from feast import FeatureView, Field
from feast.types import Float64

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[
        Field(name="total_spend_30d", dtype=Float64, description="Spend over the last 30 days."),
        Field(name="avg_order_value", dtype=Float64, description="Mean order value, 30 days."),
        Field(name="orders_30d", dtype=Float64, description="Orders in the last 30 days."),
        Field(name="sessions_30d", dtype=Float64, description="Site/app sessions, 30 days."),
        Field(name="days_since_last_order", dtype=Float64, description="Recency in days."),
        Field(name="tenure_days", dtype=Float64, description="Days since the first order."),
        Field(name="returns_30d", dtype=Float64, description="Returned orders, 30 days."),
        Field(name="discount_share", dtype=Float64, description="Share of orders with a discount."),
        Field(name="support_tickets_90d", dtype=Float64, description="Support tickets, 90 days."),
        Field(name="mobile_share", dtype=Float64, description="Share of sessions on mobile."),
        Field(name="categories_browsed_30d", dtype=Float64, description="Distinct categories."),
        Field(name="email_open_rate", dtype=Float64, description="Share of emails opened."),
    ],
    online=True,
    # The push source: the stream consumer's pushes reach this view; its batch source (the
    # offline table's FileSource) serves materialize and point-in-time reads.
    source=customer_profile_push,
    tags={"owner": "segmentation", "team": "ml-platform"},
)
