import CloudAgentCore
import CloudAgentProtocol
import CloudAgentSandbox
import Foundation
import HTTPTypes
import Logging
import Prometheus
import Synchronization

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
    /// The agents sessions may name.
    public let agents: AgentRegistry
    let layout: WorkspaceLayout
    let workspaces: GitWorkspaces
    let supervisor: RuntimeSupervisor
    /// The sandbox runtimes are launched in (`bwrap` or `none`).
    public var sandboxKind: String { supervisor.sandbox.kind.rawValue }
    let heartbeats: HeartbeatBatcher
    let maxRuntimes: Int
    let capacity = Capacity()
    public let hub = EventHub()
    /// Wakes those waiting for a session to change (interrupt, a start after a stop).
    let changes = SessionChanges()
    let callbackWakeUps = WakeSignal()
    private let startedListeningAt: Mutex<Date>

    public init(
        store: any SessionStore, timing: Timing, secretBox: SecretBox, clock: any WallClock, scheduler: WakeUpScheduler,
        logger: Logger, metrics: ServerMetrics, agents: AgentRegistry, layout: WorkspaceLayout, workspaces: GitWorkspaces,
        supervisor: RuntimeSupervisor, heartbeats: HeartbeatBatcher, maxRuntimes: Int
    ) {
        self.store = store
        self.timing = timing
        self.secretBox = secretBox
        self.clock = clock
        self.scheduler = scheduler
        self.logger = logger
        self.metrics = metrics
        self.agents = agents
        self.layout = layout
        self.workspaces = workspaces
        self.supervisor = supervisor
        self.heartbeats = heartbeats
        self.maxRuntimes = maxRuntimes
        self.startedListeningAt = Mutex(clock.now())
    }

    /// When this control plane started serving: downtime before it never counts against a
    /// runtime (runtimes can only reconnect once it listens).
    public var controlPlaneStartedAt: Date { startedListeningAt.withLock { $0 } }

    /// Called once the server listens.
    func markListening() { startedListeningAt.withLock { $0 = clock.now() } }

    /// Commits a change and offers its events to live subscribers.
    @discardableResult
    func commit(_ change: SessionChange) async throws -> [Event] {
        let events = try await store.commit(change)
        hub.publish(events)
        changes.changed(change.sessionId)
        return events
    }

    // MARK: API operations

    /// Prepares a session from a validated create body.
    public func create(owner: Owner, input: SessionInput) async throws -> SessionRecord {
        guard case .set(let prompt) = input.prompt else { throw APIError.invalid(field: "prompt", "is required") }
        var spec = SessionSpec(prompt: prompt)
        try apply(input, to: &spec)
        let id = SessionID()
        let workBranch = spec.repo?.branch ?? "session/\(id.rawValue)"
        // Capacity first: a full house answers 503 before any clone.
        try await admitRuntime(for: id)
        do {
            let session = try await prepareAndLaunch(id: id, owner: owner, spec: spec, workBranch: workBranch)
            await capacity.release(id)
            return session
        } catch {
            await capacity.release(id)
            throw error
        }
    }

    private func prepareAndLaunch(id: SessionID, owner: Owner, spec: SessionSpec, workBranch: String) async throws -> SessionRecord {
        do {
            try await workspaces.prepare(workspaceRequest(id: id, spec: spec, workBranch: workBranch))
        } catch let failure as SetupFailure {
            logger.info("session setup failed", metadata: ["sessionId": "\(id)", "command": "\(failure.command)", "exitCode": "\(failure.exitCode)"])
            throw Self.setupFailed(failure)
        }
        let now = clock.now()
        var session = SessionRecord(id: id, owner: owner, createdAt: now, spec: spec, workBranch: workBranch)
        try session.runtime.requestStart(at: now)
        do {
            // Due at once: a crash before the first evaluation loses no timer.
            try await store.insertSession(session, wakeUp: now)
        } catch {
            layout.remove(id)
            throw error
        }
        metrics.sessionsCreated.increment()
        logger.info("session prepared", metadata: ["sessionId": "\(id)", "user": "\(owner)", "agent": "\(spec.agent)"])
        session = try await locks.withLock(id) { try await self.launchRuntime(id) } ?? session
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
        let current = try await session(id, owner: owner)
        if current.initiatedAt != nil, !input.changesOnlyIdleTimeout {
            throw APIError.invalidState("session \(id) was initiated: only idleTimeoutMs may change now")
        }
        var spec = current.spec
        try apply(input, to: &spec)
        // What the runtime was started with (its environment, its workspace) needs a new start.
        let newWorkspace = input.repo != .unchanged || input.setupCommands != .unchanged
        let newRuntime = newWorkspace || input.envVars != .unchanged || input.secrets != .unchanged || input.agent != .unchanged
        if newRuntime {
            try await reprepare(id, spec: spec, newWorkspace: newWorkspace)
        }
        let updated = try await locks.withLock(id) {
            var session = try await self.session(id, owner: owner)
            let idleTimeoutBefore = session.idleTimeoutMs(default: self.timing.idleTimeoutMs)
            try self.apply(input, to: &session.spec)
            if input.repo != .unchanged { session.workBranch = session.spec.repo?.branch ?? "session/\(id.rawValue)" }
            session.updatedAt = self.clock.now()
            if newRuntime, session.runtime.state == .stopped { try session.runtime.requestStart(at: session.updatedAt) }
            try await self.commit(SessionChange(sessionId: id, session: session))
            if newRuntime { return try await self.launchRuntime(id) ?? session }
            // The runtime goes by the idle timeout when it can reach no control plane: tell it,
            // under the lock, so that settings frames go out in the order of the commits.
            let idleTimeoutMs = session.idleTimeoutMs(default: self.timing.idleTimeoutMs)
            if idleTimeoutMs != idleTimeoutBefore, let connection = await self.supervisor.connection(for: id) {
                connection.send(.settings(idleTimeoutMs: idleTimeoutMs))
            }
            return session
        }
        if newRuntime { await capacity.release(id) }
        logger.info("session changed", metadata: [
            "sessionId": "\(id)", "idleTimeoutMs": "\(updated.idleTimeoutMs(default: timing.idleTimeoutMs))", "restarted": "\(newRuntime)",
        ])
        await scheduler.poke(id)
        return updated
    }

    /// Before a prepared session's repo, setup commands or environment change: its runtime is
    /// stopped (rule `operator`), and for a new repo or setup commands its workspace is prepared
    /// anew (a failure is 422 and leaves the session as it was; its workspace is then restored
    /// from the old settings at the next start). Holds a runtime slot for the new start.
    private func reprepare(_ id: SessionID, spec: SessionSpec, newWorkspace: Bool) async throws {
        await stopRuntime(id, reason: StopReason(rule: .operator, at: clock.now(), detail: "session changed before initiate"))
        try await admitRuntime(for: id)
        guard newWorkspace else { return }
        layout.remove(id)
        do {
            try await workspaces.prepare(workspaceRequest(id: id, spec: spec, workBranch: spec.repo?.branch ?? "session/\(id.rawValue)"))
        } catch let failure as SetupFailure {
            await capacity.release(id)
            _ = try? await locks.withLock(id) {
                if var session = try await self.store.session(id), session.runtime.state == .stopped {
                    try session.runtime.requestStart(at: self.clock.now())
                    try await self.commit(SessionChange(sessionId: id, session: session))
                }
            }
            launchInBackground(id)
            throw Self.setupFailed(failure)
        }
    }

    static func setupFailed(_ failure: SetupFailure) -> APIError {
        APIError(
            .unprocessableContent, code: "SETUP_FAILED", "setup failed: \(failure.command) exited with \(failure.exitCode)",
            details: ["command": .string(failure.command), "exitCode": .number(Double(failure.exitCode)), "outputTail": .string(failure.outputTail)]
        )
    }

    /// Deletes a session: its runtime is stopped (rule `deleted`), its workspace and data removed.
    public func delete(_ id: SessionID, owner: Owner) async throws {
        _ = try await session(id, owner: owner)
        await stopRuntime(id, reason: StopReason(rule: .deleted, at: clock.now(), detail: "session deleted"))
        try await locks.withLock(id) {
            let session = try await self.session(id, owner: owner)
            try await self.remove(session, rule: .deleted)
        }
        metrics.sessionsDeleted.increment()
        await scheduler.arm(id, at: nil)
    }

    /// The execution the rules and the view go by: the session's active one while there is one
    /// (never decided by id order), else its latest.
    public func currentExecution(of session: SessionRecord) async throws -> Execution? {
        if let active = session.activeExecutionId, let execution = try await store.execution(active) { return execution }
        return try await store.latestExecution(of: session.id)
    }

    func apply(_ input: SessionInput, to spec: inout SessionSpec) throws {
        switch input.prompt {
        case .set(let prompt): spec.prompt = prompt
        case .clear, .unchanged: break
        }
        switch input.agent {
        case .set(let agent):
            try agents.requireAvailable(agent)
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
        await supervisor.connection(for: session.id)?.close()
        layout.remove(session.id)
        _ = try await store.deleteSession(session.id)
        hub.close(session.id)
        logger.info("session removed", metadata: ["sessionId": "\(session.id)", "rule": "\(rule.rawValue)"])
    }
}
