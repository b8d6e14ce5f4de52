import CloudAgentCore
import Foundation
import Logging
import Prometheus
import Synchronization

/// Where every change to a session is made: one store transaction per decision (read, decide
/// with a pure `SessionReducer` function, write), then — after the commit — its events go to
/// live subscribers, the session's waiters are woken, and each decision note becomes one log
/// line and its metric. No lock is held by anyone: the store's transaction is the only
/// serialization, and it never spans slow work.
public final class SessionLedger: Sendable {
    public let store: any SessionStore
    public let timing: Timing
    package let clock: any WallClock
    package let logger: Logger
    package let metrics: ServerMetrics
    public let hub: EventHub
    /// The nodes sharing the store (a single node knows only itself).
    public let cluster: ClusterView
    /// Wakes those waiting for a session to change (an interrupt waiting for the end, a test).
    package let changes: SessionChanges
    /// How much agent output the store keeps (`CLOUD_AGENT_MAX_EVENTS_PER_EXECUTION`, `…_EVENT_BYTES_PER_SESSION`).
    public let eventCaps: EventCaps
    /// A user's runtimes starting or running at once (`CLOUD_AGENT_MAX_RUNTIMES_PER_USER`); nil: no limit.
    public let maxRuntimesPerUser: Int?
    /// A user's agent cost per UTC day past which a new execution is refused
    /// (`CLOUD_AGENT_USER_DAILY_BUDGET_USD`); nil: no limit.
    public let userDailyBudgetUsd: Double?
    private let startedListeningAt: Mutex<Date>

    package init(
        store: any SessionStore, timing: Timing, clock: any WallClock, logger: Logger, metrics: ServerMetrics, hub: EventHub = EventHub(),
        cluster: ClusterView = .single, eventCaps: EventCaps = .default, maxRuntimesPerUser: Int? = nil, userDailyBudgetUsd: Double? = nil
    ) {
        self.eventCaps = eventCaps
        self.maxRuntimesPerUser = maxRuntimesPerUser
        self.userDailyBudgetUsd = userDailyBudgetUsd
        self.store = store
        self.cluster = cluster
        self.timing = timing
        self.clock = clock
        self.logger = logger
        self.metrics = metrics
        self.hub = hub
        self.changes = SessionChanges(clock: clock)
        self.startedListeningAt = Mutex(clock.now())
    }

    /// When this control plane started serving: downtime before it never counts against a
    /// runtime (runtimes can only reconnect once it listens).
    public var controlPlaneStartedAt: Date { startedListeningAt.withLock { $0 } }

    /// Called once the server listens.
    package func markListening() { startedListeningAt.withLock { $0 = clock.now() } }

    /// Since when the control plane has served without a break, as of `now`: from this node's
    /// start, or with several nodes from when the cluster last had no node serving — and in any
    /// case not before the store last came back from an outage (the store's downtime is the
    /// control plane's).
    package func servingSince(now: Date) -> Date {
        let served = cluster.availableSince(now: now, fallback: controlPlaneStartedAt)
        guard let storeBack = store.availability?.answeringSince else { return served }
        return max(served, storeBack)
    }

    /// The context of a decision made now: silence before `servingSince` never counts, and a
    /// runtime whose node was lost is judged from that loss.
    package func context() -> SessionContext {
        let now = clock.now()
        return SessionContext(
            now: now, timing: timing, controlPlaneStartedAt: servingSince(now: now),
            nodeId: cluster.recordedNodeId, lostNodes: cluster.lostNodes(now: now), nodeStarts: cluster.nodeStarts, eventCaps: eventCaps,
            maxRuntimesPerUser: maxRuntimesPerUser
        )
    }

    /// Decides and commits one change of session `id` in one transaction; then publishes its
    /// events and wakes its waiters. Called by `Engine.perform` only, which adds the rules, arms
    /// the wake-up and runs the effects.
    package func update<Output: Sendable>(
        _ id: SessionID, forRules: Bool = false,
        _ decide: @escaping @Sendable (SessionState?, SessionContext) throws -> Decision<Output>
    ) async throws -> Committed<Output> {
        let context = context()
        let committed = try await store.update(id, forRules: forRules) { state in try decide(state, context) }
        if committed.change != nil {
            hub.publish(committed.events)
            changes.changed(id)
        }
        return committed
    }

    /// The same for reducers that return notes: each becomes one log line (and its metric).
    package func update<Output: Sendable>(
        _ id: SessionID, forRules: Bool = false,
        _ decide: @escaping @Sendable (SessionState?, SessionContext) throws -> Decision<SessionReducer.Outcome<Output>>
    ) async throws -> Committed<Output> {
        let committed = try await update(id, forRules: forRules, decide) as Committed<SessionReducer.Outcome<Output>>
        for note in committed.output.notes { record(note, session: id) }
        return Committed(output: committed.output.output, effects: committed.effects, events: committed.events, change: committed.change)
    }

    /// Commits a change decided without reading the session (appending events, say).
    @discardableResult
    package func commit(_ change: SessionChange) async throws -> [Event] {
        let events = try await store.commit(change)
        hub.publish(events)
        changes.changed(change.sessionId)
        return events
    }

    /// One log line, and the metric, of a decision.
    package func record(_ note: DecisionNote, session id: SessionID) {
        var metadata: Logger.Metadata = ["sessionId": "\(id)"]
        switch note {
        case .executionAccepted(let execution, let runtime):
            metadata["executionId"] = "\(execution)"
            metadata["runtime"] = "\(runtime.rawValue)"
            logger.info("execution accepted", metadata: metadata)
        case .executionQueued(let execution, let position):
            metadata["executionId"] = "\(execution)"
            metadata["position"] = "\(position)"
            logger.info("execution queued", metadata: metadata)
        case .usageReported(let agent, let usage):
            metrics.usageReported(agent: agent, usage)
        case .budgetReached(let execution, let measure, let used, let limit, let asked):
            metadata["executionId"] = "\(execution)"
            metadata["rule"] = "budget"
            metadata["measure"] = "\(measure)"
            metadata["used"] = "\(used)"
            metadata["limit"] = "\(limit)"
            logger.info(asked ? "budget reached: asking before the agent goes on" : "budget reached: interrupting the execution", metadata: metadata)
        case .queuedCancelled(let execution):
            metadata["executionId"] = "\(execution)"
            logger.info("queued execution cancelled", metadata: metadata)
        case .executionEnded(let execution, let status, let detail):
            metrics.executionEnded(status)
            metadata["executionId"] = "\(execution)"
            metadata["status"] = "\(status.rawValue)"
            if let detail { metadata["detail"] = "\(detail)" }
            if status == .failed { logger.warning("execution ended", metadata: metadata) } else { logger.info("execution ended", metadata: metadata) }
        case .executionStuck(let execution, let silence):
            metadata["executionId"] = "\(execution)"
            metadata["sinceLastProgressMs"] = "\(silence)"
            logger.warning("execution without progress", metadata: metadata)
        case .stopDecided(let reason):
            logger.info("runtime stop decided", metadata: metadata.merging(Self.metadata(reason)) { $1 })
        case .runtimeStopped(let reason):
            metrics.runtimeStopped(reason.rule)
            logger.info("runtime stopped", metadata: metadata.merging(Self.metadata(reason)) { $1 })
        case .runtimeLaunched(let process):
            metadata["pid"] = "\(process.pid)"
            logger.debug("runtime launch recorded", metadata: metadata)
        case .runtimeConnected(let cold):
            metadata["cold"] = "\(cold)"
            logger.info("runtime connected", metadata: metadata)
        case .runtimeReconnected:
            logger.info("runtime reconnected", metadata: metadata)
        case .sessionExpired(let untouched):
            metrics.sessionsExpired.increment()
            metadata["rule"] = "ttl"
            metadata["untouchedMs"] = "\(untouched)"
            logger.info("session expired", metadata: metadata)
        case .eventsSwept(let before):
            metrics.eventsSwept.increment()
            metadata["before"] = "\(Timestamp.format(before))"
            logger.debug("events swept", metadata: metadata)
        case .eventOutOfOrder(let seq, let acked):
            metadata["seq"] = "\(seq)"
            metadata["acked"] = "\(acked)"
            logger.warning("runtime event out of order; waiting for the resend", metadata: metadata)
        case .unknownEventKind(let kind):
            metadata["kind"] = "\(kind)"
            logger.warning("unknown runtime event kind", metadata: metadata)
        case .inputRequested(let requestId, let kind):
            metrics.inputRequested(kind)
            metadata["requestId"] = "\(requestId)"
            metadata["kind"] = "\(kind.rawValue)"
            logger.info("input requested", metadata: metadata)
        case .inputResolved(let requestId, let decision, let by, let waitedMs):
            metrics.inputResolved(decision, by: by, waitedMs: waitedMs)
            metadata["waitedMs"] = "\(waitedMs)"
            metadata["requestId"] = "\(requestId)"
            metadata["decision"] = "\(decision.rawValue)"
            metadata["by"] = "\(by.rawValue)"
            logger.info("input resolved", metadata: metadata)
        }
    }

    package static func metadata(_ reason: StopReason) -> Logger.Metadata {
        [
            "rule": "\(reason.rule.rawValue)", "idleMs": "\(reason.idleMs.map(String.init) ?? "-")",
            "idleTimeoutMs": "\(reason.idleTimeoutMs.map(String.init) ?? "-")", "detail": "\(reason.detail ?? "")",
        ]
    }
}
