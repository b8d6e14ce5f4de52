import CloudAgentCore
import CloudAgentSandbox
import Foundation
import Logging

/// What a runtime launch needs.
public struct RuntimeLaunchRequest: Sendable {
    public var session: SessionID
    public var instanceId: String
    public var secret: String
    /// The session's env vars and decrypted secrets.
    public var environment: [String: String]
    /// Which of them are secrets (the runtime masks their values in the agent's output).
    public var secretNames: [String]
    public var stopGraceMs: Int64
    /// What the runtime goes by when it can reach no control plane.
    public var idleTimeoutMs: Int64
    public var orphanLimitMs: Int64
    /// How long the control plane waits for the runtime to connect (its pending timeout).
    public var connectTimeoutMs: Int64 = 0
    /// Every live node's runtime route (several nodes), where the runtime may reconnect.
    public var controlURLs: [String] = []
}

/// The machine runtimes run on: their workspaces and their processes. The lifecycle drives
/// runtimes only through this, so that tests can put a fake host in its place (no processes,
/// each step released by the test).
public protocol RuntimeHost: Sendable {
    /// The sandbox runtimes run in (`bwrap` or `none`).
    var sandboxKind: String { get }
    /// A new session's workspace: clone, work branch, setup commands. Throws `SetupFailure`.
    func prepareWorkspace(_ request: WorkspaceRequest) async throws
    /// A cold start's workspace: restored when it is gone, setup commands run again; failures
    /// are reported, not thrown (the runtime starts anyway).
    func restoreWorkspace(_ request: WorkspaceRequest) async -> [SetupFailure]
    /// Removes a session's files (workspace, home, mirror, logs).
    func removeWorkspace(_ session: SessionID)
    /// Commits the workspace's changes on the work branch, and pushes them (auto-commit).
    func autoCommit(_ request: WorkspaceRequest, executionId: ExecutionID, summary: String) async -> AutoCommitOutcome
    /// Spawns a runtime process, detached, and watches it (a death is reported to the exit handler).
    func launch(_ request: RuntimeLaunchRequest) async throws -> RuntimeProcess
    /// Takes a runtime's processes down: SIGTERM, SIGKILL after the grace. True when all is gone.
    func terminate(session: SessionID, process: RuntimeProcess, sandbox: String?, graceMs: Int64) async -> Bool
    /// Whether a runtime process is still there.
    func isAlive(_ process: RuntimeProcess) -> Bool
    /// The last `lines` lines of the session's runtime log on this host; nil when there is none.
    func runtimeLog(_ session: SessionID, lines: Int) async -> String?
    /// Watches a runtime launched before this control plane started.
    func adopt(session: SessionID, process: RuntimeProcess) async
    /// Stops watching a session's runtime.
    func unwatch(session: SessionID) async
    /// The runtime process watched for a session (launched or adopted here), if any.
    func watchedProcess(session: SessionID) async -> RuntimeProcess?
    /// Runs `job` in the background, inside the server's service group.
    func enqueue(_ job: @escaping @Sendable () async -> Void)
}

/// This machine: workspaces by `GitWorkspaces` in the data directory, processes by the
/// `RuntimeSupervisor` in the configured sandbox.
public struct LocalRuntimeHost: RuntimeHost {
    package let supervisor: RuntimeSupervisor
    package let workspaces: GitWorkspaces
    package let layout: WorkspaceLayout

    public init(supervisor: RuntimeSupervisor, workspaces: GitWorkspaces, layout: WorkspaceLayout) {
        self.supervisor = supervisor
        self.workspaces = workspaces
        self.layout = layout
    }

    public var sandboxKind: String { supervisor.sandbox.kind.rawValue }

    public func prepareWorkspace(_ request: WorkspaceRequest) async throws { try await workspaces.prepare(request) }
    public func restoreWorkspace(_ request: WorkspaceRequest) async -> [SetupFailure] { await workspaces.restore(request) }
    public func removeWorkspace(_ session: SessionID) { layout.remove(session) }
    public func autoCommit(_ request: WorkspaceRequest, executionId: ExecutionID, summary: String) async -> AutoCommitOutcome {
        await workspaces.autoCommit(request, executionId: executionId.rawValue, summary: summary)
    }

    public func launch(_ request: RuntimeLaunchRequest) async throws -> RuntimeProcess {
        try await supervisor.launch(
            session: request.session, instanceId: request.instanceId, secret: request.secret, environment: request.environment,
            secretNames: request.secretNames, stopGraceMs: request.stopGraceMs, idleTimeoutMs: request.idleTimeoutMs,
            orphanLimitMs: request.orphanLimitMs, connectTimeoutMs: request.connectTimeoutMs, controlURLs: request.controlURLs
        )
    }

    public func terminate(session: SessionID, process: RuntimeProcess, sandbox: String?, graceMs: Int64) async -> Bool {
        await supervisor.terminate(session: session, process: process, sandbox: sandbox, graceMs: graceMs)
    }

    public func isAlive(_ process: RuntimeProcess) -> Bool { supervisor.isAlive(process) }
    public func runtimeLog(_ session: SessionID, lines: Int) async -> String? {
        let url = layout.runtimeLog(session)
        // File reads off the cooperative pool's threads.
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: RuntimeLogFile.tail(url, lines: lines)) }
        }
    }
    public func adopt(session: SessionID, process: RuntimeProcess) async { await supervisor.adopt(session: session, process: process) }
    public func unwatch(session: SessionID) async { await supervisor.unwatch(session: session) }
    public func watchedProcess(session: SessionID) async -> RuntimeProcess? { await supervisor.watchedProcess(session: session) }
    public func enqueue(_ job: @escaping @Sendable () async -> Void) { supervisor.enqueue(job) }
}

extension WorkspaceRequest {
    /// What preparing, restoring or committing a session's workspace needs, its secrets opened.
    package init(session id: SessionID, spec: SessionSpec, workBranch: String?, opening secretBox: SecretBox) throws {
        let secrets = try spec.secrets.mapValues { try secretBox.open($0) }
        self.init(
            sessionId: id,
            repo: try spec.repo.map { RepoSource(url: $0.url, branch: $0.branch, token: try $0.token.map { try secretBox.open($0) }) },
            workBranch: workBranch ?? "session/\(id.rawValue)",
            environment: spec.envVars.merging(secrets) { _, secret in secret },
            secretValues: Array(secrets.values) + (try spec.repo?.token.map { [try secretBox.open($0)] } ?? []),
            setupCommands: spec.setupCommands
        )
    }
}
