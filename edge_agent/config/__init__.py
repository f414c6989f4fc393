"""The agent's configuration: one YAML file, validated by these models (which document it).

`sources.py` holds the sources' sections, `pipelines.py` the pipelines' (and their union, the
one place a new kind of pipeline is added), `agent.py` the file as a whole, `remote.py` the part
central may set (sources, pipelines) and how it is applied over the file.
"""

from edge_agent.config.agent import (
    EXAMPLE,
    AgentConfig,
    BufferConfig,
    SecurityConfig,
    UiConfig,
    UplinkConfig,
    is_loopback,
    load_agent_config,
)
from edge_agent.config.pipelines import (
    AutoWriteConfig,
    ControlConfig,
    DefectRules,
    EvidenceConfig,
    FeatureConfig,
    ObjectiveConfig,
    PipelineConfig,
    ProcessPipelineConfig,
    RecommendConfig,
    RejectOutputConfig,
    SamplingConfig,
    VisionPipelineConfig,
)
from edge_agent.config.remote import (
    REMOTE_KEYS,
    RemoteConfig,
    RemoteConfigError,
    check_remote_body,
    effective_config,
    remote_config_json_schema,
)
from edge_agent.config.sources import (
    CameraSourceConfig,
    OpcUaSourceConfig,
    RoiConfig,
    SourceConfig,
    opcua_address_problem,
)

__all__ = [
    "EXAMPLE", "REMOTE_KEYS", "AgentConfig", "AutoWriteConfig", "BufferConfig",
    "CameraSourceConfig", "ControlConfig", "DefectRules", "EvidenceConfig", "FeatureConfig",
    "ObjectiveConfig", "OpcUaSourceConfig", "PipelineConfig", "ProcessPipelineConfig",
    "RecommendConfig", "RejectOutputConfig", "RemoteConfig", "RemoteConfigError", "RoiConfig",
    "SamplingConfig",
    "SecurityConfig", "SourceConfig", "UiConfig", "UplinkConfig", "VisionPipelineConfig",
    "check_remote_body", "effective_config", "is_loopback", "load_agent_config",
    "opcua_address_problem", "remote_config_json_schema",
]
