import CloudAgentCore
import CloudAgentProtocol
import CloudAgentSandbox
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The runtimes' processes: launching a runtime in its sandbox, signalling what it launched,
/// and noticing a runtime that dies on its own.
/// Long work (cold starts, stops) runs as jobs inside this service's `run`, never as loose tasks.
public actor RuntimeSupervisor: Service {
    public typealias Job = @Sendable () async -> Void
    public typealias ExitHandler = @Sendable (SessionID, RuntimeProcess, String) async -> Void

    package let layout: WorkspaceLayout
    package let sandbox: SandboxWrapper
    package let runtimeExecutable: URL
    package let logLevel: Logger.Level
    package let logger: Logger
    private var port: Int?
    /// Runtime processes to watch: launched by this control plane (our children) or adopted
    /// from before a restart.
    private var watched: [SessionID: (process: RuntimeProcess, ownChild: Bool)] = [:]
    private var onExit: ExitHandler?
    private let jobs: AsyncStream<Job>
    private let jobQueue: AsyncStream<Job>.Continuation

    public init(layout: WorkspaceLayout, sandbox: SandboxWrapper, runtimeExecutable: URL, logLevel: Logger.Level, logger: Logger) {
        self.layout = layout
        self.sandbox = sandbox
        self.runtimeExecutable = runtimeExecutable
        self.logLevel = logLevel
        self.logger = logger
        (jobs, jobQueue) = AsyncStream.makeStream()
    }

    public func setExitHandler(_ handler: @escaping ExitHandler) { onExit = handler }

    /// The port runtimes connect back to (known once the server listens).
    public func setPort(_ port: Int) { self.port = port }

    /// Runs `job` inside the supervisor's task group.
    public nonisolated func enqueue(_ job: @escaping Job) { jobQueue.yield(job) }

    // MARK: Processes

    public struct LaunchFailure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Launches a runtime for the session, detached from this process, and watches it.
    /// `environment` is the session's env vars and decrypted secrets; `secretNames` says which
    /// are secrets (the runtime masks their values in the agent's output). `idleTimeoutMs` and
    /// `orphanLimitMs` are what the runtime goes by when it can reach no control plane.
    package func launch(
        session: SessionID, instanceId: String, secret: String, environment: [String: String], secretNames: [String] = [], stopGraceMs: Int64,
        idleTimeoutMs: Int64, orphanLimitMs: Int64, connectTimeoutMs: Int64 = 0, controlURLs: [String] = []
    ) throws -> RuntimeProcess {
        guard let port else { throw LaunchFailure(description: "the control plane is not listening yet") }
        let workspace = layout.workspace(session)
        let home = layout.home(session)
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: layout.runtimeLog(session).deletingLastPathComponent(), withIntermediateDirectories: true)
        RuntimeLogFile.bound(layout.runtimeLog(session))
        var env = environment
        env["SESSION_ID"] = session.rawValue
        env["SESSION_HOME"] = home.path
        env["HOME"] = home.path
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env["CLOUD_AGENT_CONTROL_URL"] = "ws://127.0.0.1:\(port)\(RuntimeProtocol.path)"
        // Every live node, where the runtime reconnects when this one goes away.
        if !controlURLs.isEmpty { env["CLOUD_AGENT_CONTROL_URLS"] = controlURLs.joined(separator: ",") }
        env["CLOUD_AGENT_RUNTIME_ID"] = instanceId
        env["CLOUD_AGENT_WORKSPACE"] = workspace.path
        env["CLOUD_AGENT_STOP_GRACE_MS"] = String(stopGraceMs)
        env["CLOUD_AGENT_IDLE_TIMEOUT_MS"] = String(idleTimeoutMs)
        env["CLOUD_AGENT_ORPHAN_LIMIT_MS"] = String(orphanLimitMs)
        env["CLOUD_AGENT_CONNECT_TIMEOUT_MS"] = String(connectTimeoutMs)
        env["CLOUD_AGENT_LOG_LEVEL"] = logLevel.rawValue
        if !secretNames.isEmpty { env["CLOUD_AGENT_SECRET_NAMES"] = secretNames.sorted().joined(separator: ",") }
        let argv = sandbox.wrap([runtimeExecutable.path], workspace: workspace, home: home)
        let spawned = try ProcessControl.spawnDetached(
            argv: argv, environment: env, workingDirectory: workspace, stdin: secret + "\n", logFile: layout.runtimeLog(session)
        )
        let process = RuntimeProcess(pid: spawned.pid, startTime: spawned.startTime)
        watched[session] = (process, true)
        logger.info("runtime launched", metadata: ["sessionId": "\(session)", "pid": "\(spawned.pid)", "sandbox": "\(sandbox.kind.rawValue)"])
        return process
    }

    /// Watches a runtime launched before this control plane started.
    package func adopt(session: SessionID, process: RuntimeProcess) { watched[session] = (process, false) }

    package func unwatch(session: SessionID) { watched[session] = nil }

    package func watchedProcess(session: SessionID) -> RuntimeProcess? { watched[session]?.process }

    /// Whether a runtime process is still there.
    package nonisolated func isAlive(_ process: RuntimeProcess) -> Bool {
        ProcessControl.isAlive(SpawnedProcess(pid: process.pid, startTime: process.startTime))
    }

    /// Stops a runtime: SIGTERM to the runtime process (the control plane has asked it to shut
    /// down first, so it reports its agent interrupted), SIGKILL to everything of its launch
    /// after the grace. Only the launched process (pid and start time) and what lies below it in
    /// the kernel's process tree are signalled, never a pid a runtime reported. Under bubblewrap
    /// the runtime is the sandbox's program, two levels below the launched `bwrap`, which is
    /// SIGKILLed last (and with it, everything inside). True when all is gone.
    package func terminate(session: SessionID, process: RuntimeProcess, sandbox: String?, graceMs: Int64) async -> Bool {
        watched[session] = nil
        let root = SpawnedProcess(pid: process.pid, startTime: process.startTime)
        let sandboxed = sandbox == SandboxKind.bwrap.rawValue
        return await ProcessControl.terminate(
            root, graceful: { tree in sandboxed ? tree.at(depth: 2) : tree.at(depth: 0) }, graceMs: graceMs,
            reap: { _ = ProcessControl.reapIfExited(root.pid) }
        )
    }

    // MARK: Service

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.watchProcesses() }
                for await job in self.jobs {
                    group.addTask { await job() }
                }
                group.cancelAll()
            }
        }
    }

    /// Notices runtimes that die on their own, within ~100 ms.
    private func watchProcesses() async {
        while !Task.isCancelled {
            for (session, entry) in watched {
                let exitStatus = entry.ownChild ? ProcessControl.reapIfExited(entry.process.pid) : nil
                guard exitStatus != nil || !isAlive(entry.process) else { continue }
                watched[session] = nil
                let detail =
                    exitStatus.map { "runtime process \(entry.process.pid) exited (\(Self.describe(status: $0)))" }
                    ?? "runtime process \(entry.process.pid) is gone"
                logger.warning("runtime died", metadata: ["sessionId": "\(session)", "pid": "\(entry.process.pid)", "detail": "\(detail)"])
                if let onExit { enqueue { await onExit(session, entry.process, detail) } }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    package static func describe(status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exit code \((status >> 8) & 0xff)" }
        return "killed by signal \(signal)"
    }
}
