import CloudAgentCore
import Foundation
import Logging

/// The session parts wired together, each with one responsibility:
/// - `ledger` commits decisions (one transaction each) and publishes their events;
/// - `performer` is the one way a session changes (`Engine.perform`: the decision and the
///   session's rules in one transaction, then the wake-up armed and the effects run);
/// - `sessions` runs the API's commands;
/// - `gateway` handles the runtimes' frames; `connections` their connections and the runtime
///   outbox's delivery;
/// - `lifecycle` launches and stops runtimes on the `RuntimeHost`, within capacity;
/// - `rules` fires wake-ups;
/// - `effects` carries out what decisions decide, after their commit (through `lifecycle`,
///   `connections` and the auto-commit runner, which are built before it and never hold it:
///   the engine is handed to them with each effect).
public struct SessionEngine: Sendable {
    public let ledger: SessionLedger
    public let sessions: SessionService
    public let gateway: RuntimeGateway
    package let connections: RuntimeConnections
    public let lifecycle: RuntimeLifecycle
    public let rules: RuleRunner
    package let effects: EffectRunner
    package let performer: Engine
    /// Signalled when a change writes callback deliveries.
    package let callbackWakeUps: WakeSignal

    public init(
        store: any SessionStore, host: any RuntimeHost, timing: Timing, clock: any WallClock, secretBox: SecretBox,
        agents: AgentRegistry, heartbeats: HeartbeatBatcher, scheduler: WakeUpScheduler, maxRuntimes: Int,
        cluster: ClusterView = .single, eventCaps: EventCaps = .default, maxRuntimesPerUser: Int? = nil, userDailyBudgetUsd: Double? = nil,
        metrics: ServerMetrics, logger: Logger
    ) {
        ledger = SessionLedger(
            store: store, timing: timing, clock: clock, logger: logger, metrics: metrics, cluster: cluster, eventCaps: eventCaps,
            maxRuntimesPerUser: maxRuntimesPerUser, userDailyBudgetUsd: userDailyBudgetUsd)
        callbackWakeUps = WakeSignal()
        connections = RuntimeConnections(ledger: ledger, agents: agents, logger: logger)
        lifecycle = RuntimeLifecycle(
            ledger: ledger, host: host, maxRuntimes: maxRuntimes, secretBox: secretBox, connections: connections, logger: logger
        )
        effects = EffectRunner(
            lifecycle: lifecycle, connections: connections,
            autoCommit: AutoCommitRunner(ledger: ledger, host: host, secretBox: secretBox, logger: logger), callbackWakeUps: callbackWakeUps
        )
        performer = Engine(ledger: ledger, scheduler: scheduler, effects: effects, wakeUps: WakeUpTickets())
        gateway = RuntimeGateway(ledger: ledger, heartbeats: heartbeats, engine: performer, connections: connections, logger: logger)
        rules = RuleRunner(ledger: ledger, engine: performer, metrics: metrics, logger: logger)
        sessions = SessionService(
            ledger: ledger, secretBox: secretBox, lifecycle: lifecycle, engine: performer, agents: agents, logger: logger, metrics: metrics
        )
    }

    /// A runtime process died on its own (the supervisor's exit handler).
    package func exited(_ id: SessionID, process: RuntimeProcess, detail: String) async {
        await lifecycle.exited(id, process: process, detail: detail, engine: performer)
    }
}
