import CloudAgentCore
import CloudAgentProtocol
import Foundation
import HTTPTypes
import Logging

extension SessionService {
    /// A follow-up's body: `{prompt, mode?, model?}`.
    public struct MessageInput: Sendable {
        public var prompt: String
        public var mode: String?
        public var model: String?

        public static func parse(_ body: JSONValue) throws(ValidationError) -> MessageInput {
            guard case .object(let object) = body else { throw ValidationError(field: "body", "must be a JSON object") }
            if let unknown = object.keys.sorted().first(where: { !["prompt", "mode", "model"].contains($0) }) {
                throw ValidationError(field: unknown, "is not a known field")
            }
            guard let prompt = object["prompt"], !prompt.isNull else { throw ValidationError(field: "prompt", "is required") }
            var input = MessageInput(prompt: try Validate.prompt(prompt, field: "prompt"))
            if let mode = object["mode"], !mode.isNull { input.mode = try Validate.name(mode, field: "mode") }
            if let model = object["model"], !model.isNull { input.model = try Validate.name(model, field: "model") }
            return input
        }
    }

    /// Starts an execution: the prepared prompt (`initiate`) or a follow-up (`messages`).
    /// Answers at once; a stopped runtime is cold-started first (in the background).
    public func startExecution(_ id: SessionID, owner: Owner, message: MessageInput?) async throws -> Execution {
        let current = try await session(id, owner: owner)
        if message == nil, current.initiatedAt != nil { throw APIError.invalidState("session \(id) was already initiated; send a message instead") }
        if message != nil, current.initiatedAt == nil { throw APIError.invalidState("session \(id) was not initiated yet; initiate it first") }
        if let active = current.activeExecutionId { throw APIError.executionInProgress(active) }
        // The agent may have gone since the session was prepared (a server started without it).
        try agents.requireAvailable(current.spec.agent)
        if current.runtime.state == .stopping { await waitUntilStopped(id) }
        let needsStart = try await store.session(id)?.runtime.state == .stopped
        if needsStart { try await admitRuntime(for: id) }

        let started: (Execution, RuntimeState)
        do {
            started = try await locks.withLock(id) {
                var session = try await self.session(id, owner: owner)
                if let active = session.activeExecutionId { throw APIError.executionInProgress(active) }
                let now = self.clock.now()
                let prompt = message?.prompt ?? session.spec.prompt
                let execution = Execution(
                    id: ExecutionID(at: now), sessionId: id, prompt: prompt, mode: message?.mode ?? session.spec.mode,
                    model: message?.model ?? session.spec.model, acceptedAt: now
                )
                var events: [NewEvent] = []
                let stateBefore = session.runtime.state
                if stateBefore == .stopped {
                    try session.runtime.requestStart(at: now)
                } else if stateBefore == .stopping {
                    throw APIError(.serviceUnavailable, code: "RUNTIME_UNAVAILABLE", "the session's runtime is still stopping; retry", details: ["retryable": .bool(true)])
                }
                if session.initiatedAt == nil { session.initiatedAt = now }
                session.activeExecutionId = execution.id
                session.executionCount += 1
                session.updatedAt = now
                events.append(NewEvent(executionId: execution.id, type: EventType.executionStarted, at: now, data: [
                    "prompt": .string(String(prompt.prefix(2000))), "followUp": .bool(message != nil),
                ]))
                do {
                    try await self.commit(SessionChange(sessionId: id, session: session, newExecution: execution, events: events))
                } catch StoreError.executionInProgress(let active) {
                    throw APIError.executionInProgress(active)
                }
                return (execution, stateBefore)
            }
        } catch {
            if needsStart { await capacity.release(id) }
            throw error
        }
        let (execution, stateBefore) = started
        logger.info("execution accepted", metadata: ["sessionId": "\(id)", "executionId": "\(execution.id)", "runtime": "\(stateBefore.rawValue)"])
        if stateBefore == .stopped {
            launchInBackground(id)
        } else if let connection = await supervisor.connection(for: id) {
            connection.activeExecution = execution.id
            connection.send(.execute(executeCommand(execution, session: current)))
        }
        if needsStart == false { await capacity.release(id) }
        await scheduler.poke(id)
        return execution
    }

    private func waitUntilStopped(_ id: SessionID) async {
        _ = await changes.wait(for: id, within: .milliseconds(timing.stopGraceMs + 3000)) {
            (try? await self.store.session(id))?.runtime.state != .stopping
        }
    }

    /// Interrupts the active execution (idempotent): the runtime SIGTERMs its agent's process
    /// group, SIGKILL after the grace. Waits (bounded) until it has ended.
    public func interrupt(_ id: SessionID, owner: Owner) async throws -> ExecutionID? {
        let target: ExecutionID? = try await locks.withLock(id) {
            let session = try await self.session(id, owner: owner)
            guard let activeId = session.activeExecutionId, var execution = try await self.store.execution(activeId), execution.status.isActive else {
                return nil
            }
            if let connection = await self.supervisor.connection(for: id), execution.status == .running || connection.activeExecution == activeId {
                connection.send(.kill(executionId: activeId.rawValue, reason: "user"))
                return activeId
            }
            // Nothing runs it yet (or its runtime is away): it ends here.
            var updated = session
            let now = self.clock.now()
            try execution.end(.interrupted, at: now, interruptReason: "user", reportedByRuntime: false)
            updated.activeExecutionId = nil
            updated.updatedAt = now
            try await self.commitSignallingCallbacks(SessionChange(
                sessionId: id, session: updated, executions: [execution],
                events: [NewEvent(executionId: activeId, type: EventType.executionInterrupted, at: now, data: ["reason": "user"])],
                callbacks: try self.callbacks(for: execution, session: updated)
            ))
            self.metrics.executionEnded(.interrupted)
            return activeId
        }
        guard let target else { return nil }
        logger.info("execution interrupt requested", metadata: ["sessionId": "\(id)", "executionId": "\(target)"])
        _ = await changes.wait(for: id, within: .milliseconds(timing.stopGraceMs + 3000)) {
            !((try? await self.store.execution(target))?.status.isActive ?? false)
        }
        await scheduler.poke(id)
        return target
    }

    public func executions(of id: SessionID, owner: Owner) async throws -> [Execution] {
        _ = try await session(id, owner: owner)
        return try await store.executions(of: id)
    }

    public func execution(_ executionId: ExecutionID, of id: SessionID, owner: Owner) async throws -> Execution {
        _ = try await session(id, owner: owner)
        guard let execution = try await store.execution(executionId), execution.sessionId == id else {
            throw APIError.notFound("execution \(executionId)")
        }
        return execution
    }

    public func events(of id: SessionID, owner: Owner, query: EventQuery) async throws -> [Event] {
        _ = try await session(id, owner: owner)
        return try await store.events(of: id, query)
    }
}
