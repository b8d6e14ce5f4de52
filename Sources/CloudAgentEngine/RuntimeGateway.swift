import CloudAgentCore
import CloudAgentProtocol
import Foundation
import Logging

/// The runtimes' side of the control plane: what happens when a frame arrives. Each frame is
/// one `SessionReducer` decision performed by the engine (`hello`, `ingest`); heartbeats are
/// batched into one column. The connections and the runtime outbox's delivery are
/// `RuntimeConnections`'.
public final class RuntimeGateway: Sendable {
    package let ledger: SessionLedger
    package let heartbeats: HeartbeatBatcher
    package let logger: Logger
    package let engine: Engine
    package let connections: RuntimeConnections

    package init(ledger: SessionLedger, heartbeats: HeartbeatBatcher, engine: Engine, connections: RuntimeConnections, logger: Logger) {
        self.ledger = ledger
        self.heartbeats = heartbeats
        self.engine = engine
        self.connections = connections
        self.logger = logger
    }

    // MARK: Connections

    public func connection(for session: SessionID) -> RuntimeConnection? { connections.connection(for: session) }
    package func register(_ connection: RuntimeConnection) { connections.register(connection) }
    package func unregister(_ connection: RuntimeConnection) { connections.unregister(connection) }
    package func close(_ session: SessionID, telling reason: String) { connections.close(session, telling: reason) }
    package func tellNodes(_ controlURLs: [String]) { connections.tellNodes(controlURLs) }
    package var connectedSessions: [SessionID] { connections.connectedSessions }
    package func reconcile(_ id: SessionID) async { await connections.reconcile(id) }

    // MARK: Frames

    /// Checks a connecting runtime's secret against its session's current launch. A store that
    /// fails throws (a 5xx, which the runtime retries): only an unknown session or a wrong secret
    /// is nil (a 401, which makes the runtime exit).
    package func authenticate(session rawId: String?, secret: String?) async throws -> SessionRecord? {
        guard let rawId, let id = SessionID(rawValue: rawId), let secret, !secret.isEmpty,
            let session = try await ledger.store.session(id), let expected = session.runtime.secretHash,
            BearerToken.hash(secret) == expected
        else { return nil }
        return session
    }

    /// A runtime said hello (`SessionReducer.hello`): it is welcomed and registered, then sent
    /// the outbox. False when the runtime must go away (told to shut down).
    package func hello(_ connection: RuntimeConnection, activeExecutionId: String?) async throws -> Bool {
        let id = connection.sessionId
        let instanceId = connection.instanceId
        let committed = try await engine.perform(
            id,
            first: { [self] committed in
                guard let welcome = committed.output else { return }
                register(connection)
                connection.activeExecution = welcome.activeExecutionId
                // Every live node's route (several nodes), where the runtime reconnects when this one dies.
                let controlURLs = ledger.cluster.controlURLs(now: ledger.clock.now())
                connection.send(
                    .welcome(
                        ackedSeq: welcome.ackedSeq, heartbeatIntervalMs: ledger.timing.heartbeatIntervalMs, stopGraceMs: ledger.timing.stopGraceMs,
                        idleTimeoutMs: welcome.idleTimeoutMs, controlUrls: controlURLs.isEmpty ? nil : controlURLs
                    ))
                if let reported = welcome.killReported { connection.send(.kill(executionId: reported, reason: "execution already ended")) }
            }
        ) { state, context in
            SessionReducer.hello(state, instanceId: instanceId, reportedActive: activeExecutionId, context: context)
        }
        guard committed.output != nil else {
            connection.send(.shutdown(reason: "this runtime was stopped"))
            return false
        }
        return true
    }

    /// Records a batch of the runtime's events (`SessionReducer.ingest`), then acknowledges
    /// them once durable. A batch ends after an `execution.ended`, so that the completion's
    /// effects (auto-commit, callback, the next execute) see it committed.
    package func ingest(_ batch: [RuntimeEvent], from connection: RuntimeConnection) async throws {
        let id = connection.sessionId
        let instanceId = connection.instanceId
        var rest = batch[...]
        while !rest.isEmpty {
            let end = rest.firstIndex { $0.kind == RuntimeEvent.Kind.ended }.map { $0 + 1 } ?? rest.endIndex
            let run = rest[..<end].map(Self.reported)
            rest = rest[end...]
            // A state transition (running, ended) moves the session's deadlines: the rules are
            // evaluated in the same transaction (`Decision.movesDeadlines`).
            try await engine.perform(
                id,
                first: { committed in
                    let ingested = committed.output
                    if let ack = ingested.ack { connection.send(.ack(seq: ack)) }
                    if ingested.ended != nil { connection.activeExecution = nil }
                }
            ) { state, context in
                try SessionReducer.ingest(state, instanceId: instanceId, events: run, context: context)
            }
        }
    }

    package static func reported(_ event: RuntimeEvent) -> ReportedEvent {
        let kind: ReportedEvent.Kind =
            switch event.kind {
            case RuntimeEvent.Kind.running: .running
            case RuntimeEvent.Kind.agent: .agent
            case RuntimeEvent.Kind.output: .output
            case RuntimeEvent.Kind.ended: .ended
            case RuntimeEvent.Kind.inputRequested: .inputRequested
            case RuntimeEvent.Kind.inputWithdrawn: .inputWithdrawn
            case RuntimeEvent.Kind.usage: .usage
            default: .unknown(event.kind)
            }
        return ReportedEvent(seq: event.seq, executionId: event.executionId, kind: kind, at: event.at, data: event.data)
    }

    /// `count` heartbeats (received together) of the connection's active execution (anything
    /// else is ignored). A heartbeat changes one column of its execution and nothing else: no
    /// decision is made when it arrives. The rules read it when the session's wake-up fires.
    package func heartbeat(_ executionId: String, count: Int = 1, from connection: RuntimeConnection) async {
        guard let active = connection.activeExecution, active.rawValue == executionId else { return }
        await heartbeats.record(active, at: ledger.clock.now(), count: count)
    }
}
