import CloudAgentCore
import Foundation
import Logging
import Prometheus

/// The sessions' operations behind the API and the wake-ups: validation results in, state
/// transitions out. Every write to a session happens under that session's lock and ends with a
/// poke of the scheduler, so the session's next wake-up always reflects its state.
public final class SessionService: Sendable {
    public let store: any SessionStore
    public let timing: Timing
    let secretBox: SecretBox
    let clock: any WallClock
    let scheduler: WakeUpScheduler
    let locks = SessionLocks()
    let logger: Logger
    let metrics: ServerMetrics
    let knownAgents: Set<String>
    let workspacesDirectory: URL
    /// When this control plane started: downtime before it never counts against a runtime.
    public let controlPlaneStartedAt: Date

    public init(
        store: any SessionStore, timing: Timing, secretBox: SecretBox, clock: any WallClock, scheduler: WakeUpScheduler,
        logger: Logger, metrics: ServerMetrics, knownAgents: Set<String>, workspacesDirectory: URL
    ) {
        self.store = store
        self.timing = timing
        self.secretBox = secretBox
        self.clock = clock
        self.scheduler = scheduler
        self.logger = logger
        self.metrics = metrics
        self.knownAgents = knownAgents
        self.workspacesDirectory = workspacesDirectory
        self.controlPlaneStartedAt = clock.now()
    }

    // MARK: API operations

    /// Prepares a session from a validated create body.
    public func create(owner: Owner, input: SessionInput) async throws -> SessionRecord {
        guard case .set(let prompt) = input.prompt else { throw APIError.invalid(field: "prompt", "is required") }
        var spec = SessionSpec(prompt: prompt)
        try apply(input, to: &spec)
        let now = clock.now()
        let id = SessionID()
        let session = SessionRecord(
            id: id, owner: owner, createdAt: now, spec: spec, workBranch: spec.repo?.branch ?? "session/\(id.rawValue)"
        )
        try await store.insertSession(session)
        metrics.sessionsCreated.increment()
        logger.info("session prepared", metadata: ["sessionId": "\(id)", "user": "\(owner)", "agent": "\(spec.agent)"])
        await scheduler.poke(id)
        return session
    }

    /// The session if it exists and belongs to `owner`; another owner's session is not found.
    public func session(_ id: SessionID, owner: Owner) async throws -> SessionRecord {
        guard let session = try await store.session(id), session.owner == owner else { throw APIError.notFound("session \(id)") }
        return session
    }

    public func list(owner: Owner, limit: Int, after cursor: SessionCursor?) async throws -> [SessionRecord] {
        try await store.sessions(owner: owner, limit: limit, after: cursor)
    }

    /// Changes a session. Before initiate any field; after it only `idleTimeoutMs`, which moves
    /// the idle deadline at once.
    public func patch(_ id: SessionID, owner: Owner, input: SessionInput) async throws -> SessionRecord {
        let updated = try await locks.withLock(id) {
            var session = try await self.session(id, owner: owner)
            if session.initiatedAt != nil, !input.changesOnlyIdleTimeout {
                throw APIError.invalidState("session \(id) was initiated: only idleTimeoutMs may change now")
            }
            try self.apply(input, to: &session.spec)
            if input.repo != .unchanged { session.workBranch = session.spec.repo?.branch ?? "session/\(id.rawValue)" }
            session.updatedAt = self.clock.now()
            try await self.store.commit(SessionChange(sessionId: id, session: session))
            return session
        }
        logger.info("session changed", metadata: ["sessionId": "\(id)", "idleTimeoutMs": "\(updated.idleTimeoutMs(default: timing.idleTimeoutMs))"])
        await scheduler.poke(id)
        return updated
    }

    /// Deletes a session: its runtime is stopped (rule `deleted`), its workspace and data removed.
    public func delete(_ id: SessionID, owner: Owner) async throws {
        try await locks.withLock(id) {
            let session = try await self.session(id, owner: owner)
            try await self.remove(session, rule: .deleted)
        }
        metrics.sessionsDeleted.increment()
        await scheduler.arm(id, at: nil)
    }

    /// The latest execution of a session, for its view.
    public func latestExecution(of id: SessionID) async throws -> Execution? {
        try await store.latestExecution(of: id)
    }

    func apply(_ input: SessionInput, to spec: inout SessionSpec) throws {
        switch input.prompt {
        case .set(let prompt): spec.prompt = prompt
        case .clear, .unchanged: break
        }
        switch input.agent {
        case .set(let agent):
            guard knownAgents.contains(agent) else {
                throw APIError.invalid(field: "agent", "\"\(agent)\" is not an available agent (available: \(knownAgents.sorted().joined(separator: ", ")))")
            }
            spec.agent = agent
        case .clear: spec.agent = SessionSpec.defaultAgent
        case .unchanged: break
        }
        update(&spec.mode, input.mode)
        update(&spec.model, input.model)
        switch input.repo {
        case .set(let repo): spec.repo = RepoSpec(url: repo.url, branch: repo.branch, token: repo.token.map(secretBox.seal))
        case .clear: spec.repo = nil
        case .unchanged: break
        }
        switch input.envVars {
        case .set(let env): spec.envVars = env
        case .clear: spec.envVars = [:]
        case .unchanged: break
        }
        switch input.secrets {
        case .set(let secrets): spec.secrets = secrets.mapValues(secretBox.seal)
        case .clear: spec.secrets = [:]
        case .unchanged: break
        }
        if let both = spec.envVars.keys.sorted().first(where: { spec.secrets[$0] != nil }) {
            throw APIError.invalid(field: "secrets.\(both)", "is also in envVars: a name may be one or the other")
        }
        switch input.setupCommands {
        case .set(let commands): spec.setupCommands = commands
        case .clear: spec.setupCommands = []
        case .unchanged: break
        }
        switch input.autoCommit {
        case .set(let flag): spec.autoCommit = flag
        case .clear: spec.autoCommit = false
        case .unchanged: break
        }
        switch input.callback {
        case .set(let callback): spec.callback = CallbackSpec(url: callback.url, headers: callback.headers.mapValues(secretBox.seal))
        case .clear: spec.callback = nil
        case .unchanged: break
        }
        update(&spec.idleTimeoutMs, input.idleTimeoutMs)
    }

    private func update<Value>(_ field: inout Value?, _ change: FieldUpdate<Value>) {
        switch change {
        case .set(let value): field = value
        case .clear: field = nil
        case .unchanged: break
        }
    }

    /// Removes a session and everything it owns. The caller holds the session's lock.
    func remove(_ session: SessionRecord, rule: StopRule) async throws {
        let workspace = workspacesDirectory.appendingPathComponent(session.id.rawValue)
        try? FileManager.default.removeItem(at: workspace)
        _ = try await store.deleteSession(session.id)
        logger.info("session removed", metadata: ["sessionId": "\(session.id)", "rule": "\(rule.rawValue)"])
    }

    // MARK: The rules, applied

    /// Evaluates a session's rules at now, carries out what they decide, persists the session's
    /// next wake-up and returns it. Idempotent: evaluating again changes nothing.
    public func evaluate(_ id: SessionID) async -> Date? {
        metrics.wakeUpsFired.increment()
        do {
            return try await locks.withLock(id) {
                // Each action is a transition done once; a few rounds settle any chain of them.
                for _ in 0..<4 {
                    guard let session = try await self.store.session(id) else { return nil }
                    let snapshot = SessionSnapshot(
                        session: session,
                        latestExecution: try await self.store.latestExecution(of: id),
                        oldestEventAt: try await self.store.oldestEventAt(of: id)
                    )
                    let now = self.clock.now()
                    let evaluation = SessionRules.evaluate(
                        snapshot, timing: self.timing, controlPlaneStartedAt: self.controlPlaneStartedAt, now: now
                    )
                    if evaluation.actions.isEmpty {
                        if try await self.store.wakeUp(of: id) != evaluation.nextWakeUp {
                            try await self.store.commit(SessionChange(sessionId: id, wakeUp: .some(evaluation.nextWakeUp)))
                        }
                        return evaluation.nextWakeUp
                    }
                    for action in evaluation.actions {
                        guard try await self.carryOut(action, on: snapshot, now: now) else { return nil }
                    }
                }
                return self.clock.now().adding(milliseconds: 1000)
            }
        } catch {
            logger.error("evaluating a session failed; retrying in 1 s", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
            return clock.now().adding(milliseconds: 1000)
        }
    }

    /// Carries out one decided action. Returns false when the session is gone.
    private func carryOut(_ action: SessionAction, on snapshot: SessionSnapshot, now: Date) async throws -> Bool {
        var session = snapshot.session
        let id = session.id
        switch action {
        case .failExecution(let executionId, let error):
            guard var execution = snapshot.latestExecution, execution.id == executionId else { return true }
            try execution.end(.failed, at: now, error: error, reportedByRuntime: false)
            session.activeExecutionId = nil
            session.updatedAt = now
            try await store.commit(SessionChange(
                sessionId: id, session: session, executions: [execution],
                events: [NewEvent(executionId: executionId, type: EventType.executionFailed, at: now, data: ["error": .string(error)])]
            ))
            metrics.executionEnded(.failed)
            logger.warning("execution failed by the liveness rule", metadata: ["sessionId": "\(id)", "executionId": "\(executionId)", "error": "\(error)"])
        case .reportStuck(let executionId, let silenceMs):
            guard var execution = snapshot.latestExecution, execution.id == executionId else { return true }
            execution.stuckReportedAt = now
            try await store.commit(SessionChange(
                sessionId: id, executions: [execution],
                events: [NewEvent(executionId: executionId, type: EventType.executionStuck, at: now, data: ["sinceLastProgressMs": JSONValue(silenceMs)])]
            ))
            logger.warning("execution without progress", metadata: ["sessionId": "\(id)", "executionId": "\(executionId)", "sinceLastProgressMs": "\(silenceMs)"])
        case .stopRuntime(let reason):
            try session.runtime.markStopped(at: now, reason: reason)
            session.updatedAt = now
            try await store.commit(SessionChange(
                sessionId: id, session: session,
                events: [NewEvent(type: EventType.runtimeStopped, at: now, data: Self.stopEventData(reason))]
            ))
            metrics.runtimeStopped(reason.rule)
            logger.info("runtime stopped", metadata: [
                "sessionId": "\(id)", "rule": "\(reason.rule.rawValue)", "idleMs": "\(reason.idleMs.map(String.init) ?? "-")",
                "idleTimeoutMs": "\(reason.idleTimeoutMs.map(String.init) ?? "-")",
            ])
        case .expire(let untouchedMs):
            try await remove(session, rule: .ttl)
            metrics.sessionsExpired.increment()
            logger.info("session expired", metadata: ["sessionId": "\(id)", "rule": "ttl", "untouchedMs": "\(untouchedMs)"])
            return false
        case .sweepEvents(let cutoff):
            let count = try await store.deleteEvents(of: id, olderThan: cutoff)
            metrics.eventsSwept.increment(by: Int64(count))
            logger.debug("events swept", metadata: ["sessionId": "\(id)", "count": "\(count)"])
        }
        return true
    }

    static func stopEventData(_ reason: StopReason) -> [String: JSONValue] {
        [
            "rule": .string(reason.rule.rawValue), "lastActivityAt": JSONValue(reason.lastActivityAt),
            "idleMs": JSONValue(reason.idleMs), "idleTimeoutMs": JSONValue(reason.idleTimeoutMs), "detail": JSONValue(reason.detail),
        ]
    }
}
