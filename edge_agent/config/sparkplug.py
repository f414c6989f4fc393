"""The `sparkplug:` section: publish the pipelines to a SCADA host as a Sparkplug B edge node."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.common import StrictModel
from edge_agent.kernel.transport import BrokerConfig


class SparkplugConfig(StrictModel):
    """A Sparkplug B 3.0 edge node on its own broker connection (a plant's SCADA broker is
    often not central's); each pipeline is a device."""

    enabled: bool = Field(False, description="Publish Sparkplug B births, data and deaths")
    group_id: str = Field("edge-mlops", min_length=1, pattern=r"^[^/+#]+$",
                          description="Sparkplug group id: the first level under spBv1.0/")
    edge_node_id: str | None = Field(None, min_length=1, pattern=r"^[^/+#]+$",
                                     description="Edge node id; the device id when unset")
    broker: BrokerConfig = Field(default_factory=BrokerConfig,
                                 description="The SCADA broker (topic_prefix is not used)")
    primary_host_id: str | None = Field(
        None, min_length=1, pattern=r"^[^/+#]+$",
        description="The SCADA primary host application's id: births wait until its STATE "
        "says online, and its going offline ends the session (a new bdSeq follows)")
    publish_interval_s: float = Field(1.0, gt=0, le=3600,
                                      description="Seconds between checks for changed metrics")
