import CloudAgentCore
import CloudAgentProtocol
import Foundation
import Logging
import Synchronization

/// The runtimes connected here, and the runtime outbox's delivery: a connection is sent each
/// row once, in order, after the commit that wrote it. Makes no decision (an effect delivers
/// through it, and the lifecycle asks runtimes to shut down through it).
package final class RuntimeConnections: Sendable {
    package let ledger: SessionLedger
    package let agents: AgentRegistry
    package let logger: Logger
    private let connections = Mutex<[SessionID: RuntimeConnection]>([:])
    /// One delivery at a time per session, so that rows go out in order. Held only while rows
    /// are read and queued on the connection, never across slow work.
    private let deliveries = KeyedLocks<SessionID>()
    /// Signalled when a session's connection goes: a stop waiting for its runtime to hang up
    /// wakes on the event, not on a poll.
    private let disconnects: SessionChanges

    package init(ledger: SessionLedger, agents: AgentRegistry, logger: Logger) {
        self.ledger = ledger
        self.disconnects = SessionChanges(clock: ledger.clock)
        self.agents = agents
        self.logger = logger
    }

    public func connection(for session: SessionID) -> RuntimeConnection? { connections.withLock { $0[session] } }

    /// Registers a runtime's connection, closing any earlier one of the same session.
    package func register(_ connection: RuntimeConnection) {
        let earlier = connections.withLock { connections -> RuntimeConnection? in
            defer { connections[connection.sessionId] = connection }
            return connections[connection.sessionId]
        }
        if let earlier, earlier !== connection { earlier.close() }
    }

    package func unregister(_ connection: RuntimeConnection) {
        connections.withLock { if $0[connection.sessionId] === connection { $0[connection.sessionId] = nil } }
        connection.close()
        disconnects.changed(connection.sessionId)
    }

    /// Asks a session's runtime to shut down (the first step of a stop).
    package func askToShutDown(_ session: SessionID, reason: String) {
        guard let connection = connection(for: session) else { return }
        connection.askedToShutDown.withLock { $0 = true }
        connection.send(.shutdown(reason: reason))
    }

    /// Closes and forgets a session's connection (its runtime is stopped, or the session gone).
    package func close(_ session: SessionID) {
        connections.withLock { $0.removeValue(forKey: session) }?.close()
        disconnects.changed(session)
    }

    /// Tells a session's runtime why, then closes its connection.
    package func close(_ session: SessionID, telling reason: String) {
        guard let connection = connections.withLock({ $0.removeValue(forKey: session) }) else { return }
        connection.send(.shutdown(reason: reason))
        connection.close()
        disconnects.changed(session)
    }

    /// Tells every runtime connected here the live nodes' routes (they changed): each goes round
    /// them when its node goes away, a node that joined after its welcome included.
    package func tellNodes(_ controlURLs: [String]) {
        guard !controlURLs.isEmpty else { return }
        let all = connections.withLock { Array($0.values) }
        for connection in all { connection.send(.nodes(controlUrls: controlURLs)) }
    }

    /// The sessions whose runtime is connected here.
    package var connectedSessions: [SessionID] { connections.withLock { Array($0.keys) } }

    /// Waits until the session's runtime has no connection here, at most `limit`.
    package func waitUntilDisconnected(_ session: SessionID, within limit: Duration) async {
        _ = await disconnects.wait(for: session, within: limit) { self.connection(for: session) == nil }
    }

    /// Brings a runtime connected here in line with its session as another node left it: a
    /// stopped, replaced or deleted runtime is told to go and disconnected; a stopping one is
    /// asked to shut down (once); a running one is sent its new outbox rows.
    package func reconcile(_ id: SessionID) async {
        guard let connection = connection(for: id) else { return }
        let session: SessionRecord?
        do { session = try await ledger.store.session(id) } catch {
            logger.warning("reading a session for its runtime failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
            return
        }
        guard let session, session.runtime.instanceId == connection.instanceId, session.runtime.state != .stopped else {
            close(id, telling: "this runtime was stopped")
            return
        }
        switch session.runtime.state {
        case .stopping:
            let first = connection.askedToShutDown.withLock { asked in
                defer { asked = true }
                return !asked
            }
            if first { connection.send(.shutdown(reason: session.runtime.stopReason?.rule.rawValue ?? "stopping")) }
        case .running:
            await deliverCommands(id)
        case .starting, .stopped:
            break
        }
    }

    // MARK: The runtime outbox

    /// Sends a session's runtime-outbox rows that its connection has not been sent yet, in
    /// order. Only a `running` runtime of the current launch is sent anything; an `execute` is
    /// held back while the session's last auto-commit is pending, and dropped here when its
    /// execution is no longer pending. Rows stay in the outbox until a change makes them moot,
    /// so a runtime that reconnects is sent them again (it ignores a repeat).
    ///
    /// `written` is the committed change that asked for the delivery: the executions it wrote
    /// are not read again (an `execute` row exists only while its execution is pending: every
    /// change that moves an execution out of `pending` drops its row in the same transaction).
    /// The rows are read (their ids order the delivery, and an earlier change's rows may be held
    /// back), and so is the session, which a later commit may have changed.
    package func deliverCommands(_ id: SessionID, written: SessionChange? = nil) async {
        guard connection(for: id) != nil else { return }
        do {
            try await deliveries.withLock(id) {
                guard let connection = self.connection(for: id) else { return }
                let after = connection.deliveredThrough.withLock { $0 }
                let rows = try await self.ledger.store.commands(of: id, after: after)
                guard !rows.isEmpty, let session = try await self.ledger.store.session(id),
                    session.runtime.state == .running, session.runtime.instanceId == connection.instanceId
                else { return }
                var known: [ExecutionID: Execution] = [:]
                for execution in (written?.executions ?? []) + (written?.newExecution.map { [$0] } ?? []) { known[execution.id] = execution }
                var through = after
                rows: for row in rows {
                    switch row.command {
                    case .execute(let executionId):
                        // Held back (with what follows) until the auto-commit is recorded.
                        if session.autoCommitPending != nil { break rows }
                        let execution = if let written = known[executionId] { written } else { try await self.ledger.store.execution(executionId) }
                        if let execution, execution.status == .pending {
                            connection.activeExecution = executionId
                            connection.send(.execute(self.executeCommand(execution, session: session)))
                        }
                    case .kill(let executionId, let reason):
                        connection.send(.kill(executionId: executionId.rawValue, reason: reason))
                    case .settings(let idleTimeoutMs):
                        connection.send(.settings(idleTimeoutMs: idleTimeoutMs))
                    case .pause(let executionId):
                        connection.send(.pause(executionId: executionId.rawValue))
                    case .resume(let executionId):
                        connection.send(.resume(executionId: executionId.rawValue))
                    case .answer(let reply):
                        connection.send(
                            .answer(
                                InputAnswerFrame(
                                    executionId: reply.executionId.rawValue, requestId: reply.requestId, decision: reply.decision.rawValue,
                                    optionId: reply.optionId, answer: reply.answer
                                )))
                    }
                    through = row.id
                }
                connection.deliveredThrough.withLock { $0 = max($0, through) }
            }
        } catch {
            logger.error("delivering runtime commands failed", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
        }
    }

    /// What the runtime needs to run `execution`: the prompt, the agent as the registry resolved
    /// it, and the agent's own conversation to resume.
    package func executeCommand(_ execution: Execution, session: SessionRecord) -> ExecuteCommand {
        ExecuteCommand(
            executionId: execution.id.rawValue, agent: session.spec.agent, prompt: execution.prompt,
            mode: execution.mode, model: execution.model, launch: agents.launch(for: session.spec.agent),
            conversationId: session.agentConversationId, approvals: session.spec.approvals == .ask ? "ask" : nil,
            mcpServers: session.spec.mcpServers.isEmpty ? nil : .object(session.spec.mcpServers.mapValues(\.json))
        )
    }
}
