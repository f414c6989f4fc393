"""Signed configurations from central: checked, switched to, watched, kept or reverted.

A ConfigDeployCommand is believed only when it and its document carry central's signature, it
is for this gateway, fresh, not seen before, and not a downgrade; its body must validate over
the gateway's own file (`effective_config`). The workload then switches to it, touching only
what changed, and watches it for the document's probation: a failed source, a dead pipeline or
one producing only errors sends the gateway back to its last good configuration by itself.
Every step is a DeploymentEvent (subject "config") on the deployment topic and in the buffer:
received -> activated -> confirmed | failed | rolled_back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig, RemoteConfigError, effective_config
from edge_agent.deployment.checks import CommandWindow
from edge_agent.deployment.ledger import CommandLedger
from edge_agent.fleet.config_files import LEDGER_FILE, ConfigFiles
from edge_agent.fleet.workload import Workload
from edge_agent.kernel.contract import (
    RECORD_DEPLOYMENT_EVENT,
    ConfigDeployCommand,
    ConfigDocument,
    ConfigRollbackCommand,
    DeploymentEvent,
    Topics,
    encode,
)
from edge_agent.kernel.signing import SignatureError, Verifier
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

ConfigCommand = ConfigDeployCommand | ConfigRollbackCommand
PROBATION_POLL_S = 0.25  # how often the parts of a configuration on probation are looked at
LOCAL_FILE = "the gateway's own configuration file"


class ConfigManager:
    """Which configuration the gateway runs (`current`, the document in force, None for its
    own file; `effective`, the configuration in force), and the commands that change it."""

    def __init__(self, local: AgentConfig, topics: Topics, transport: Transport,
                 buffer: Buffer, verifier: Verifier | None,
                 window: CommandWindow | None = None) -> None:
        self.local = local
        self.device_id = local.device_id
        self._topics, self._transport, self._buffer = topics, transport, buffer
        self._verifier = verifier
        self._window = window or CommandWindow()
        self.files = ConfigFiles(local.data_dir)
        self._ledger = CommandLedger(self.files.folder / LEDGER_FILE)
        self.workload: Workload | None = None  # the agent hands it over once built
        # Told after each switch (the agent publishes its status: central sees what runs).
        self.on_switched: Callable[[], Awaitable[None]] | None = None
        self.rejected_messages = 0  # commands refused: forged, stale, replayed, downgrades
        self.probation_poll_s = PROBATION_POLL_S
        self._task: asyncio.Task[None] | None = None
        self._superseded_by: str | None = None
        self._switching: asyncio.Future[str] | None = None  # the switch under way
        self._interrupted = self.files.pending()
        self.good, self.effective = self._last_good()  # confirmed, and what it makes
        self.current = self.good

    # --- boot ---

    def _last_good(self) -> tuple[ConfigDocument | None, AgentConfig]:
        """The last good document and its configuration; the gateway's own file when there is
        none, or it no longer verifies or validates (logged)."""
        document = self.files.current()
        pending = self._interrupted
        if pending is not None and document is not None \
                and pending.document.sha256 == document.sha256 \
                and pending.document.version == document.version:
            self._interrupted = None  # confirmed; the agent died before pending was removed
            self.files.end_switch()
        if document is None:
            return None, self.local
        try:
            if self._verifier is not None:
                self._verifier.verify(document, "configuration")
            return document, effective_config(self.local, document.body)
        except (SignatureError, RemoteConfigError) as exc:
            log.warning("configuration %s from central not used, running %s: %s",
                        document.label, LOCAL_FILE, exc)
            return None, self.local

    async def start(self) -> None:
        """Report a switch the agent died in as rolled back. The workload (built from
        `effective`) is handed over before: a command may come as soon as the broker is."""
        log.info("configuration in force device=%s config=%s", self.device_id,
                 self.current.label if self.current else "local file")
        interrupted, self._interrupted = self._interrupted, None
        if interrupted is not None:
            await self._report(interrupted.command_id, interrupted.document, "rolled_back",
                               f"the agent restarted during the switch; {self._running()} "
                               "runs")
            self.files.end_switch()

    async def stop(self) -> None:
        """Stop watching; a switch on probation stays pending, reported at the next boot."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._switching is not None:
            await asyncio.gather(self._switching, return_exceptions=True)

    async def settled(self) -> None:
        """Wait until the command being carried out (and its probation) is over."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- commands ---

    async def handle(self, command: ConfigCommand) -> None:
        """Carry out a decoded config command (refused unless signed, fresh, new and no
        downgrade); its probation runs on in the background."""
        refusal = self.refusal(command)
        if refusal is not None:
            self.rejected_messages += 1
            log.warning("config command refused device=%s command=%s reason=%s",
                        self.device_id, command.command_id, refusal)
            name, version = self._subject(command)
            await self._report_step(command.command_id, name, version, "failed",
                                    f"refused: {refusal}")
            return
        self._ledger.add(command.command_id)
        if self._task is not None and not self._task.done():
            # A newer command supersedes the one under way: its probation ends unjudged.
            self._superseded_by = self._label(command)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._superseded_by = None
        if self._switching is not None:
            await asyncio.gather(self._switching, return_exceptions=True)
        work = self._deploy(command) if isinstance(command, ConfigDeployCommand) \
            else self._rollback(command)
        self._task = asyncio.create_task(work, name=f"config-{command.command_id}")

    def refusal(self, command: ConfigCommand, now: float | None = None) -> str | None:
        """Why this command must not be carried out here, or None. The signatures are checked
        before anything the command says is believed, its issue time included."""
        if command.device_id != self.device_id:
            return f"command is for device {command.device_id}, this is {self.device_id}"
        if command.command_id in self._ledger:
            return f"command {command.command_id} was already carried out (replayed)"
        if self._verifier is not None:
            try:
                self._verifier.verify(command, f"{command.kind} command")
                if isinstance(command, ConfigDeployCommand):
                    self._verifier.verify(command.document, "configuration")
            except SignatureError as exc:
                return str(exc)
        stale = self._window.refusal(command.issued_at, time.time() if now is None else now)
        if stale is not None:
            return stale
        if isinstance(command, ConfigDeployCommand):
            return self._downgrade(command.document)
        return None

    def _downgrade(self, document: ConfigDocument) -> str | None:
        newest = self.files.newest_version(document.name)
        if newest is not None and document.version < newest:
            return (f"{document.label} is older than {document.name}@{newest}, already applied "
                    "here; going back needs a signed rollback command")
        kept = self.files.version(document.name, document.version)
        if kept is not None and kept.sha256 != document.sha256:
            return (f"{document.label} was applied here with another body (sha256 "
                    f"{kept.sha256[:12]}, this one {document.sha256[:12]}); versions are "
                    "immutable: publish a new version")
        return None

    # --- deploy ---

    async def _deploy(self, command: ConfigDeployCommand) -> None:
        document, command_id = command.document, command.command_id
        body = document.body
        await self._report(command_id, document, "received",
                           f"{document.label}: {len(body.get('sources', []))} sources, "
                           f"{len(body.get('pipelines', []))} pipelines")
        if self.good is not None and self.current is self.good \
                and self.good.sha256 == document.sha256 and self.good.label == document.label:
            await self._report(command_id, document, "confirmed",
                               f"{document.label} is already in force")
            return
        try:
            config = effective_config(self.local, document.body)
        except RemoteConfigError as exc:
            await self._report(command_id, document, "failed", f"{exc}; {self._running()} kept")
            return
        self.files.keep_version(document)
        self.files.begin_switch(command_id, document)
        try:
            step, detail = await self._switch_and_watch(command_id, document, config)
        except asyncio.CancelledError:
            if self._superseded_by is not None:
                self.files.end_switch()
                await self._report(command_id, document, "failed",
                                   f"superseded by {self._superseded_by} before its probation "
                                   "ended")
            raise  # at shutdown it stays pending: reported as rolled back at the next boot
        if step == "confirmed":
            self.files.make_current(document, self.good)
            self.good = document
        self.files.end_switch()
        await self._report(command_id, document, step, detail)

    async def _switch_and_watch(self, command_id: str, document: ConfigDocument,
                                config: AgentConfig) -> tuple[str, str]:
        """Switch to `document`, watch it through its probation, revert it if unhealthy: the
        step to report and its detail."""
        try:
            change = await self._switch(document, config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a part that could not be built: nothing was switched
            log.exception("configuration did not start config=%s", document.label)
            return "failed", f"did not start: {exc}; {self._running()} kept"
        await self._report(command_id, document, "activated", change)
        verdict = await self._probation(document.probation_s)
        if verdict is None:
            return "confirmed", "probation passed" if document.probation_s else "no probation"
        try:
            back = await self._revert()
        except Exception as exc:
            log.exception("configuration could not be reverted config=%s", document.label)
            return "failed", f"unhealthy within its probation: {verdict}; reverting failed: {exc}"
        return "rolled_back", f"unhealthy within its probation: {verdict}; {back}"

    async def _switch(self, document: ConfigDocument | None, config: AgentConfig) -> str:
        """Run `config`. Once begun a switch is finished even if this task is cancelled (a
        newer command waits for it in `handle`), so `current` always says what runs."""
        assert self.workload is not None, "the agent hands the workload over first"
        workload = self.workload

        async def switch() -> str:
            change = await workload.apply(config)
            self.current, self.effective = document, config
            log.info("configuration switched device=%s config=%s change=%s", self.device_id,
                     document.label if document else "local file", change.summary())
            if self.on_switched is not None:
                try:
                    await self.on_switched()
                except Exception:  # the status is sent again soon; the switch is done
                    log.exception("status after a configuration switch not sent")
            return change.summary()

        self._switching = asyncio.ensure_future(switch())
        return await asyncio.shield(self._switching)

    async def _probation(self, probation_s: float) -> str | None:
        """Why the configuration now in force is unhealthy, or None after `probation_s`."""
        assert self.workload is not None
        if probation_s <= 0:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + probation_s
        while (remaining := deadline - loop.time()) > 0:
            found = self.workload.problems()
            if found:
                return "; ".join(found)
            await asyncio.sleep(min(self.probation_poll_s, remaining))
        return "; ".join(self.workload.problems(final=True)) or None

    async def _revert(self) -> str:
        """Back to the last good configuration (or the gateway's own file); in words."""
        target, config = self.good, self.local
        if target is not None:
            try:
                config = effective_config(self.local, target.body)
            except RemoteConfigError as exc:  # the local file changed since: it wins
                log.warning("last good configuration %s no longer applies: %s", target.label,
                            exc)
                target = None
        await self._switch(target, config)
        return f"{self._running()} back"

    # --- rollback ---

    async def _rollback(self, command: ConfigRollbackCommand) -> None:
        """Back to the configuration before the one in force, or to the version named."""
        leaving = self.current
        try:
            target = self._rollback_target(command)
            config = self.local if target is None else effective_config(self.local,
                                                                        target.body)
            await self._switch(target, config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nothing kept to go back to, or it no longer applies
            name, version = self._subject(command)
            await self._report_step(command.command_id, name, version, "failed",
                                    f"rollback refused: {exc}; {self._running()} kept")
            return
        # What was left becomes the one before, if it had been confirmed.
        self.files.make_current(target, leaving if leaving is self.good else self.good)
        self.files.end_switch()
        self.good = target
        version = str(target.version) if target else self._subject(command)[1]
        await self._report_step(command.command_id, command.name, version, "rolled_back",
                                f"from {leaving.label if leaving else LOCAL_FILE} to "
                                f"{self._running()}")

    def _rollback_target(self, command: ConfigRollbackCommand) -> ConfigDocument | None:
        """The document to go back to (None: the gateway's own file); LookupError if none."""
        if command.to_version is not None:
            target = self.files.version(command.name, command.to_version)
            if target is None:
                kept = ", ".join(map(str, self.files.versions(command.name))) or "none"
                raise LookupError(f"{command.name}@{command.to_version} is not kept here "
                                  f"(versions kept: {kept})")
        else:
            if self.current is None or self.current.name != command.name:
                raise LookupError(f"this gateway runs {self._running()}, not {command.name}")
            # On probation the one before is the last good; otherwise the one before that.
            target = self.good if self.current is not self.good else self.files.previous()
        if target is not None and self._verifier is not None:
            self._verifier.verify(target, "configuration")  # read back from disk
        return target

    # --- reporting ---

    def _running(self) -> str:
        return self.current.label if self.current is not None else LOCAL_FILE

    def _subject(self, command: ConfigCommand) -> tuple[str, str]:
        """The configuration name and version a command's events name: the document's, or
        for a rollback the version asked for (else the one in force)."""
        if isinstance(command, ConfigDeployCommand):
            return command.document.name, str(command.document.version)
        version = command.to_version or (self.current.version if self.current is not None
                                         and self.current.name == command.name else 1)
        return command.name, str(version)

    @staticmethod
    def _label(command: ConfigCommand) -> str:
        if isinstance(command, ConfigDeployCommand):
            return command.document.label
        return f"a rollback of {command.name}"

    async def _report(self, command_id: str, document: ConfigDocument, step: str,
                      detail: str) -> None:
        await self._report_step(command_id, document.name, str(document.version), step,
                                detail)

    async def _report_step(self, command_id: str, name: str, version: str, step: str,
                           detail: str) -> None:
        event = DeploymentEvent(device_id=self.device_id, command_id=command_id,
                                subject="config", model_name=name, version=version,
                                step=step, detail=detail)  # type: ignore[arg-type]
        log.info("config step device=%s config=%s@%s step=%s detail=%s", self.device_id,
                 name, version, step, detail)
        await self._buffer.append(RECORD_DEPLOYMENT_EVENT, event.model_dump(mode="json"))
        try:
            await self._transport.publish(self._topics.deployment(self.device_id),
                                          encode(event))
        except NotConnected:
            log.info("config step kept for the uplink only device=%s", self.device_id)

