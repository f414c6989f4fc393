"""What each kind of rollout sends: a model version, a configuration version or an agent
release.

The rollout engine asks the rollout's kind for the signed command that deploys its version to
one device and for the one that takes it back; each is recorded (with its audit entry) before
it is sent, so that the device's steps are accepted. A new kind is one more entry in
ROLLOUT_KINDS; the engine does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from central_sync.agent_releases import (
    AgentReleaseError,
    agent_rollback_command,
    agent_update_command,
    require_release,
)
from central_sync.configs import (
    ConfigError,
    config_deploy_command,
    config_rollback_command,
    require_config,
    signed_document,
)
from central_sync.db import CentralDB, NotApproved, Rollout
from central_sync.deployments import (
    TamperedManifest,
    UnknownModel,
    deploy_command,
    signed_manifest,
    unknown_model_message,
)
from edge_agent.kernel.contract import Command, RollbackCommand
from edge_agent.kernel.signing import Signer


@dataclass(frozen=True)
class RolloutKind:
    """How rollouts of one kind check, deploy and take back their version.

    `check(db, signer, name, version, approval_required)`: raise one of `refusals` unless
    name@version may be rolled out (`signer` None: the signature is checked when sent).
    `deploy(db, signer, rollout, device_id, issued_by, approval_required)`: the signed command,
    checked and recorded; one of `refusals` halts the rollout.
    `roll_back(db, signer, rollout, device_id, issued_by)`: the signed command sending the
    device back to what it ran before, recorded.
    `one_per_device`: a device runs one of this kind at a time (one configuration, one agent),
    so two running rollouts of the kind may not share a device.
    """

    check: Callable[[CentralDB, Signer | None, str, str, bool], None]
    deploy: Callable[[CentralDB, Signer, Rollout, str, str, bool], Command]
    roll_back: Callable[[CentralDB, Signer, Rollout, str, str], Command]
    refusals: tuple[type[Exception], ...]
    one_per_device: bool = False


def _check_model(db: CentralDB, signer: Signer | None, name: str, version: str,
                 approval_required: bool) -> None:
    manifest = db.get_model(name, version)
    if manifest is None:
        raise UnknownModel(unknown_model_message(name, version))
    if signer is not None:
        signed_manifest(manifest, signer)
    db.require_deployable(name, version, approval_required)


def _deploy_model(db: CentralDB, signer: Signer, rollout: Rollout, device_id: str,
                  issued_by: str, approval_required: bool) -> Command:
    command = deploy_command(db, signer, rollout.model_name, rollout.version, device_id,
                             issued_by, approval_required=approval_required)
    db.create_deployment(command)
    return command


def _roll_back_model(db: CentralDB, signer: Signer, rollout: Rollout, device_id: str,
                     issued_by: str) -> Command:
    command = signer.signed(RollbackCommand(device_id=device_id, model_name=rollout.model_name,
                                            issued_by=issued_by))
    db.record_rollback_command(command)
    return command


def _check_config(db: CentralDB, signer: Signer | None, name: str, version: str,
                  approval_required: bool) -> None:
    """A configuration needs no approval: it must exist, and be central's as signed."""
    document = require_config(db, name, config_version(version))
    if signer is not None:
        signed_document(document, signer)


def _deploy_config(db: CentralDB, signer: Signer, rollout: Rollout, device_id: str,
                   issued_by: str, approval_required: bool) -> Command:
    command = config_deploy_command(db, signer, rollout.model_name,
                                    config_version(rollout.version), device_id, issued_by)
    db.create_config_deployment(command)
    return command


def _roll_back_config(db: CentralDB, signer: Signer, rollout: Rollout, device_id: str,
                      issued_by: str) -> Command:
    command = config_rollback_command(signer, rollout.model_name, device_id, issued_by)
    db.record_config_rollback(command)
    return command


def config_version(version: str) -> int:
    """A configuration rollout's version as stored ('2') as the number it is."""
    if not version.isdigit():
        raise ConfigError(f"configuration version {version!r} is not a number such as 2")
    return int(version)


def _check_agent(db: CentralDB, signer: Signer | None, name: str, version: str,
                 approval_required: bool) -> None:
    """An agent release needs no model approval: it must be published, as central signed it."""
    require_release(db, version, signer)


def _deploy_agent(db: CentralDB, signer: Signer, rollout: Rollout, device_id: str,
                  issued_by: str, approval_required: bool) -> Command:
    command = agent_update_command(db, signer, rollout.version, device_id, issued_by)
    db.create_agent_deployment(command)
    return command


def _roll_back_agent(db: CentralDB, signer: Signer, rollout: Rollout, device_id: str,
                     issued_by: str) -> Command:
    command = agent_rollback_command(signer, device_id, issued_by)
    db.record_agent_rollback(command)
    return command


ROLLOUT_KINDS: dict[str, RolloutKind] = {
    "model": RolloutKind(_check_model, _deploy_model, _roll_back_model,
                         (UnknownModel, TamperedManifest, NotApproved)),
    "config": RolloutKind(_check_config, _deploy_config, _roll_back_config, (ConfigError,),
                          one_per_device=True),
    "agent": RolloutKind(_check_agent, _deploy_agent, _roll_back_agent, (AgentReleaseError,),
                         one_per_device=True),
}
