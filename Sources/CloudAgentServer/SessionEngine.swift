import CloudAgentCore
import Foundation
import Logging

/// The session parts wired together, each with one responsibility:
/// - `ledger` commits decisions (one transaction each) and publishes their events;
/// - `sessions` runs the API's commands;
/// - `gateway` handles the runtimes' connections and frames, and delivers the runtime outbox;
/// - `lifecycle` launches and stops runtimes on the `RuntimeHost`, within capacity;
/// - `rules` fires wake-ups;
/// - `effects` carries out what decisions decide, after their commit (through the three above
///   and the auto-commit runner).
public struct SessionEngine: Sendable {
    public let ledger: SessionLedger
    public let sessions: SessionService
    public let gateway: RuntimeGateway
    public let lifecycle: RuntimeLifecycle
    public let rules: RuleRunner
    let effects: EffectRunner
    /// Signalled when a change writes callback deliveries.
    let callbackWakeUps: WakeSignal

    public init(
        store: any SessionStore, host: any RuntimeHost, timing: Timing, clock: any WallClock, secretBox: SecretBox,
        agents: AgentRegistry, heartbeats: HeartbeatBatcher, scheduler: WakeUpScheduler, maxRuntimes: Int,
        cluster: ClusterView = .single, metrics: ServerMetrics, logger: Logger
    ) {
        ledger = SessionLedger(store: store, timing: timing, clock: clock, logger: logger, metrics: metrics, cluster: cluster)
        callbackWakeUps = WakeSignal()
        effects = EffectRunner(scheduler: scheduler, callbackWakeUps: callbackWakeUps)
        gateway = RuntimeGateway(ledger: ledger, agents: agents, heartbeats: heartbeats, effects: effects, logger: logger)
        lifecycle = RuntimeLifecycle(
            ledger: ledger, host: host, maxRuntimes: maxRuntimes, secretBox: secretBox, gateway: gateway, effects: effects, logger: logger
        )
        effects.bind(.init(
            lifecycle: lifecycle, gateway: gateway,
            autoCommit: AutoCommitRunner(ledger: ledger, host: host, secretBox: secretBox, effects: effects, logger: logger)
        ))
        rules = RuleRunner(ledger: ledger, effects: effects, metrics: metrics, logger: logger)
        sessions = SessionService(
            ledger: ledger, secretBox: secretBox, lifecycle: lifecycle, effects: effects, agents: agents, logger: logger, metrics: metrics
        )
    }
}
