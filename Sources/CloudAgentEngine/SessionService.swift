import CloudAgentCore
import CloudAgentProtocol
import CloudAgentSandbox
import Foundation
import HTTPTypes
import Logging
import Prometheus
import Synchronization

/// The API's commands on sessions. Each is one `SessionReducer` decision in one transaction
/// (`SessionLedger`), its effects run after the commit. Only a command's own slow work (cloning
/// a new session's repository, a PATCH re-preparing a workspace, a DELETE waiting for the
/// processes to go) happens in its request, and never under a lock: other sessions' requests
/// and timers, and this session's interrupt, PATCH of the idle timeout and GET, go on meanwhile.
public final class SessionService: Sendable {
    package let ledger: SessionLedger
    package let secretBox: SecretBox
    package let lifecycle: RuntimeLifecycle
    package let engine: Engine
    package let logger: Logger
    package let metrics: ServerMetrics
    /// The agents sessions may name.
    public let agents: AgentRegistry

    package init(
        ledger: SessionLedger, secretBox: SecretBox, lifecycle: RuntimeLifecycle, engine: Engine, agents: AgentRegistry,
        logger: Logger, metrics: ServerMetrics
    ) {
        self.ledger = ledger
        self.secretBox = secretBox
        self.lifecycle = lifecycle
        self.engine = engine
        self.agents = agents
        self.logger = logger
        self.metrics = metrics
    }

    public var store: any SessionStore { ledger.store }
    public var timing: Timing { ledger.timing }
    public var hub: EventHub { ledger.hub }
    public var clock: any WallClock { ledger.clock }
    /// The sandbox runtimes are launched in (`bwrap` or `none`).
    public var sandboxKind: String { lifecycle.host.sandboxKind }

    // MARK: API operations

    /// Prepares a session from a validated create body: capacity first (a full house answers
    /// 503 before any clone), then the workspace, then the record with its first wake-up; the
    /// runtime launches in the background.
    public func create(owner: Owner, input: SessionInput) async throws -> SessionRecord {
        guard case .set(let prompt) = input.prompt else { throw ValidationError(field: "prompt", "is required") }
        var spec = SessionSpec(prompt: prompt)
        try apply(input, to: &spec)
        let id = SessionID()
        let workBranch = spec.repo?.branch ?? "session/\(id.rawValue)"
        // Within the user's quota (an idle runtime of theirs evicted, else 429) before anything is made.
        try await lifecycle.makeRoomInQuota(for: id, owner: owner, engine: engine)
        let session = try await lifecycle.admitting(id, engine: engine) {
            do {
                do {
                    try await lifecycle.host.prepareWorkspace(lifecycle.workspaceRequest(id: id, spec: spec, workBranch: workBranch))
                } catch let failure as SetupFailure {
                    logger.info("session setup failed", metadata: ["sessionId": "\(id)", "command": "\(failure.command)", "exitCode": "\(failure.exitCode)"])
                    throw failure
                }
                let now = clock.now()
                var record = SessionRecord(id: id, owner: owner, createdAt: now, spec: spec, workBranch: workBranch)
                try record.runtime.requestStart(at: now)
                // Due at once: a crash before the first evaluation loses no timer. The quota is
                // counted again with the insert, under the owner's lock.
                do {
                    try await store.insertSession(record, wakeUp: now, maxOwnerRuntimes: ledger.maxRuntimesPerUser)
                } catch StoreError.quotaExceeded(let limit) {
                    throw SessionError.limitReached(
                        .runtimesPerUser, limit: Double(limit),
                        "\(owner.user) already has \(limit) runtimes starting or running (at most \(limit) per user); retry once one is idle")
                }
                return record
            } catch {
                lifecycle.host.removeWorkspace(id)
                throw error
            }
        }
        let now = session.createdAt
        metrics.sessionsCreated.increment()
        logger.info("session prepared", metadata: ["sessionId": "\(id)", "user": "\(owner)", "agent": "\(spec.agent)"])
        lifecycle.launchInBackground(id, requestedAt: now, restore: false, engine: engine)
        // Its first wake-up, stored with it, fires now: the rules' first evaluation.
        await engine.arm(id, at: now)
        return session
    }

    /// The session if it exists and belongs to `owner`; another owner's session is not found.
    public func session(_ id: SessionID, owner: Owner) async throws -> SessionRecord {
        guard let session = try await store.session(id), session.owner == owner else { throw SessionError.notFound(id) }
        return session
    }

    public func list(owner: Owner, limit: Int, after cursor: SessionCursor?) async throws -> [SessionRecord] {
        try await store.sessions(owner: owner, limit: limit, after: cursor)
    }

    /// Changes a session. Before initiate any field; after it only `idleTimeoutMs`, which moves
    /// the idle deadline at once (and reaches the runtime as a `settings` command), and
    /// `budget`, which takes effect at once (see `SessionReducer.edit`). A new repo,
    /// setup commands, environment, secrets or agent needs a new runtime: see `restartingPatch`.
    public func patch(_ id: SessionID, owner: Owner, input: SessionInput) async throws -> SessionRecord {
        // Validate the input against the current spec first: a bad field changes nothing.
        var spec = try await session(id, owner: owner).spec
        try apply(input, to: &spec)
        let newWorkspace = input.repo != .unchanged || input.setupCommands != .unchanged
        let newRuntime =
            newWorkspace || input.envVars != .unchanged || input.secrets != .unchanged || input.agent != .unchanged
            || input.mcpServers != .unchanged
        let updated: SessionRecord
        if newRuntime {
            updated = try await restartingPatch(id, owner: owner, input: input, newWorkspace: newWorkspace)
        } else {
            let onlyLiveFields = input.changesOnlyLiveFields
            // A new idle timeout moves the idle deadline: the rules are evaluated in the same transaction.
            updated = try await engine.perform(id) { state, context in
                try SessionReducer.edit(state, id: id, owner: owner, onlyLiveFields: onlyLiveFields, context: context) { session in
                    try self.apply(input, to: &session.spec)
                }.withoutNotes
            }.output
        }
        logger.info(
            "session changed",
            metadata: [
                "sessionId": "\(id)", "idleTimeoutMs": "\(updated.idleTimeoutMs(default: timing.idleTimeoutMs))", "restarted": "\(newRuntime)",
            ])
        return updated
    }

    /// A change before initiate that needs a new runtime, in two transactions around the slow
    /// part. First the session is marked as changing (an initiate meanwhile is a 409, and so is
    /// this PATCH if the initiate came first) and its runtime stopped (rule `operator`); then,
    /// for a new repo or setup commands, its workspace is prepared anew — a failure is 422 and
    /// leaves the session as it was (its workspace is restored from the old settings at the
    /// next start); then the new fields land and the runtime starts again.
    private func restartingPatch(_ id: SessionID, owner: Owner, input: SessionInput, newWorkspace: Bool) async throws -> SessionRecord {
        try await lifecycle.admitting(id, engine: engine) {
            // The runtime's stop is waited for (`awaiting`).
            try await engine.perform(id, awaiting: true) { state, context in try SessionReducer.beginChange(state, id: id, owner: owner, context: context) }
        }
        if ledger.cluster.isShared {
            // A runtime hosted by another node is stopped by that node: wait for the record.
            _ = await ledger.changes.wait(for: id, within: .milliseconds(ledger.timing.stopGraceMs + 5000)) {
                (try? await self.ledger.store.session(id))?.runtime.state != .stopping
            }
        }
        var restore = true
        if newWorkspace {
            var spec = try await session(id, owner: owner).spec
            try apply(input, to: &spec)
            lifecycle.host.removeWorkspace(id)
            do {
                try await lifecycle.host.prepareWorkspace(lifecycle.workspaceRequest(id: id, spec: spec, workBranch: spec.repo?.branch))
                restore = false
            } catch let failure as SetupFailure {
                try await engine.perform(id) { state, context in
                    try SessionReducer.finishChange(state, id: id, owner: owner, restore: true, context: context, nil).withoutNotes
                }
                throw failure
            }
        }
        return try await engine.perform(id) { [restore] state, context in
            try SessionReducer.finishChange(state, id: id, owner: owner, restore: restore, context: context) { session in
                try self.apply(input, to: &session.spec)
                if input.repo != .unchanged { session.workBranch = session.spec.repo?.branch ?? "session/\(id.rawValue)" }
            }.withoutNotes
        }.output
    }

    /// Deletes a session: the record goes at once, then its runtime is taken down (rule
    /// `deleted`; the request waits for that) and its files removed.
    public func delete(_ id: SessionID, owner: Owner) async throws {
        // The request waits for the runtime's processes to be gone (`awaiting`).
        try await engine.perform(id, awaiting: true, first: { [metrics] (_: Committed<Void>) in metrics.sessionsDeleted.increment() }) { state, context in
            try SessionReducer.delete(state, id: id, owner: owner, context: context)
        }
    }

    /// The execution the rules and the view go by: the session's active one while there is one
    /// (never decided by id order), else its latest.
    public func currentExecution(of session: SessionRecord) async throws -> Execution? {
        if let active = session.activeExecutionId, let execution = try await store.execution(active) { return execution }
        return try await store.latestExecution(of: session.id)
    }

    package func apply(_ input: SessionInput, to spec: inout SessionSpec) throws {
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
            throw ValidationError(field: "secrets.\(both)", "is also in envVars: a name may be one or the other")
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
        switch input.approvals {
        case .set(let mode): spec.approvals = mode
        case .clear: spec.approvals = .auto
        case .unchanged: break
        }
        switch input.mcpServers {
        case .set(let servers): spec.mcpServers = servers
        case .clear: spec.mcpServers = [:]
        case .unchanged: break
        }
        update(&spec.budget, input.budget)
        // What the servers name must exist, and the agent must take them (checked whatever
        // changed: a new agent, or secrets that went away, break them as well).
        for name in spec.mcpServers.keys.sorted() {
            if let missing = spec.mcpServers[name]!.secretNames.first(where: { spec.secrets[$0] == nil }) {
                throw ValidationError(field: "mcpServers.\(name)", "names secret \(missing), which the session does not have")
            }
        }
        try agents.requireMCP(spec.mcpServers, agent: spec.agent)
    }

    private func update<Value>(_ field: inout Value?, _ change: FieldUpdate<Value>) {
        switch change {
        case .set(let value): field = value
        case .clear: field = nil
        case .unchanged: break
        }
    }
}
