import ArgumentParser
import CloudAgentCore
import CloudAgentModelServer
import CloudAgentEngine
import CloudAgentServer
import Foundation
import NIOCore
import NIOHTTP1
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// `cloud-agent demo`: the product, offline, in under a minute. A control plane in this process
/// (free port, temporary data dir, a 3 s idle timeout, 200 ms heartbeats), a small git repo, a
/// session with the scripted agent that calls tools, writes a file and then stays silent for
/// longer than the idle timeout: its runtime is not stopped while it works, and is stopped
/// (rule `idle`, with the reason's numbers shown) once it is idle. Then everything is removed.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "A one-minute offline tour: a server, a repo, a scripted agent streamed live, and idle cleanup with its reason.",
        discussion: """
            Everything lives in a temporary directory that is removed at the end (kept, with the \
            session and the server log, with --keep). Needs git and cloud-agent-runtime beside \
            cloud-agent. Exit code 0 when every step behaved as promised, 1 otherwise.
            """
    )

    @Flag(help: "Keep the temporary directory (data dir, repository, server log) and the session.")
    var keep = false

    @Option(help: "The sandbox: bwrap, none or auto (bwrap when it works).")
    var sandbox: String = "auto"

    @Option(
        help: ArgumentHelp(
            "The agent: scripted (built in), or claude-code / codex — the real CLI (CLOUD_AGENT_CLAUDE_BIN / CLOUD_AGENT_CODEX_BIN or on PATH; scripts/install-agents.sh installs both) against an offline scripted model server.",
            valueName: "agent"
        ))
    var agent: String = "scripted"

    func validate() throws {
        guard SandboxMode(rawValue: sandbox) != nil else { throw ValidationError("--sandbox must be bwrap, none or auto") }
        guard DemoAgent(rawValue: agent) != nil else { throw ValidationError("--agent must be scripted, claude-code or codex") }
    }

    func run() async throws {
        let demo = Demo(
            console: Console.shared, keep: keep, sandbox: SandboxMode(rawValue: sandbox) ?? .auto, agent: DemoAgent(rawValue: agent) ?? .scripted
        )
        let passed = try await demo.run()
        if !passed { throw ExitCode(ExitStatus.executionFailed) }
    }
}

/// The agents the demo can show.
enum DemoAgent: String, Sendable {
    case scripted
    case claudeCode = "claude-code"
    case codex

    var title: String {
        switch self {
        case .scripted: "the built-in scripted agent"
        case .claudeCode: "Claude Code (the real CLI)"
        case .codex: "Codex (the real CLI)"
        }
    }

    /// What the real agent is asked; its model (the scripted model server) answers with `modelScript`.
    static let realPrompt = "Look around this repository, run hello.sh, write notes.txt, then take \(Demo.silence) s to think it over."

    /// The model's turns: tool calls the real CLI runs in the workspace, then a long silent one
    /// (longer than the idle timeout), then the final text.
    static let modelScript = ModelScript(turns: [
        ScriptTurn(.shell(command: "ls", description: "List the files"), text: "Let me look around first."),
        ScriptTurn(.shell(command: "sh hello.sh", description: "Run hello.sh")),
        ScriptTurn(.shell(command: "echo 'A runtime is never stopped while its agent works.' > notes.txt && cat notes.txt", description: "Write notes.txt")),
        ScriptTurn(
            .shell(command: "sleep \(Demo.silence)", description: "Think quietly"),
            text: "Now I think quietly for \(Demo.silence) s, longer than the idle timeout..."),
        .text("Done: hello.sh ran and notes.txt is written."),
    ])

    /// The session's env vars and secrets that point the CLI at the model server at `url`.
    func settings(modelServer url: String) -> (envVars: JSONValue, secrets: JSONValue) {
        switch self {
        case .scripted: ([:], [:])
        case .claudeCode: (["ANTHROPIC_BASE_URL": .string(url)], ["ANTHROPIC_API_KEY": "sk-ant-offline-demo"])
        case .codex: (["OPENAI_BASE_URL": .string(url + "/v1")], ["OPENAI_API_KEY": "sk-offline-demo"])
        }
    }
}

struct Demo: Sendable {
    let console: Console
    let keep: Bool
    let sandbox: SandboxMode
    var agent: DemoAgent = .scripted

    static let timing = Timing(
        idleTimeoutMs: 3000, heartbeatIntervalMs: 200, staleThresholdMs: 2000, pendingTimeoutMs: 30_000, stopGraceMs: 1000,
        stuckAfterMs: 60_000
    )
    static let silence = 5

    static let script = """
        say Hi! I am the scripted agent, working in a fresh checkout of the demo repository.
        run ls
        run sh hello.sh
        write notes.txt A runtime is never stopped while its agent works.
        run cat notes.txt
        tick 3 0.3
        say Now I think quietly for \(silence) s, longer than the 3 s idle timeout...
        sleep \(silence)
        say done
        """

    /// Runs the tour; true when every promise held.
    func run() async throws -> Bool {
        let clock = ContinuousClock()
        let began = clock.now
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("cloud-agent-demo-\(UUID().uuidString.prefix(8).lowercased())")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        defer {
            if !keep { try? FileManager.default.removeItem(at: root) }
        }
        var configuration = ServerConfiguration(
            host: "127.0.0.1", port: 0, dataDirectory: root.appendingPathComponent("data"), timing: Self.timing,
            sandbox: sandbox, logLevel: .info
        )
        let runtime = configuration.resolvedRuntimeExecutable
        guard FileManager.default.isExecutableFile(atPath: runtime.path) else {
            throw CLIFailure(
                message: "cloud-agent-runtime is not beside cloud-agent (looked for \(runtime.path)); build both with `swift build`",
                exitCode: ExitStatus.executionFailed
            )
        }
        configuration.runtimeExecutable = runtime
        let serverLog = root.appendingPathComponent("server.log")
        let logSink = try FileLogSink(serverLog)
        let logger = Logger(label: "cloud-agent") { label in FileLogHandler(label: label, sink: logSink) }

        let c = console
        c.line(c.paint("cloud-agent demo", .bold) + " — the product, offline, in under a minute")
        c.line()

        let plane = try await ControlPlane.open(configuration, store: try StoreFactory.openSQLite(configuration), logger: logger)
        if agent != .scripted {
            guard let entry = plane.sessions.agents.entry(named: agent.rawValue), entry.available else {
                let reason = plane.sessions.agents.entry(named: agent.rawValue)?.unavailableReason ?? "unknown agent"
                throw CLIFailure(
                    message: "\(agent.rawValue) is not available: \(reason). Install it with: eval \"$(scripts/install-agents.sh)\"",
                    exitCode: ExitStatus.executionFailed
                )
            }
        }
        let port = Locked<Int?>(nil)
        let modelPort = Locked<Int?>(agent == .scripted ? 0 : nil)
        let app = plane.buildApplication { listening in port.withLock { $0 = listening } }
        var services: [any Service] = [app]
        if agent != .scripted {
            let model = try ScriptedModel(script: DemoAgent.modelScript)
            services.append(buildModelServerApplication(model: model, logger: logger) { listening in modelPort.withLock { $0 = listening } })
        }
        let group = ServiceGroup(configuration: .init(services: services, logger: logger))
        let serverEnded = Locked(false)
        let interrupted = Locked(false)
        let result: Result<Bool, any Error> = await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                do { try await group.run() } catch { logger.error("the demo's server failed", metadata: ["error": "\(error)"]) }
                serverEnded.withLock { $0 = true }
            }
            let result: Result<Bool, any Error>
            do {
                let deadline = clock.now + .seconds(30)
                var listening: Int?
                var modelListening: Int?
                while listening == nil || modelListening == nil, clock.now < deadline, !serverEnded.withLock({ $0 }) {
                    listening = port.withLock { $0 }
                    modelListening = modelPort.withLock { $0 }
                    if listening == nil || modelListening == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                guard let listening, let modelListening else {
                    throw CLIFailure(message: "the demo's server did not start; see \(serverLog.path)", exitCode: ExitStatus.executionFailed)
                }
                let api = APIClient(baseURL: "http://127.0.0.1:\(listening)", token: plane.localToken)
                // Ctrl-C stops the tour and still cleans up; a second one exits at once.
                let modelURL = "http://127.0.0.1:\(modelListening)"
                let tour = Task { try await self.tour(api: api, root: root, sandboxUsed: plane, modelServer: modelURL) }
                let interrupts = Task.detached {
                    var count = 0
                    for await _ in await UnixSignalsSequence(trapping: .sigint) {
                        count += 1
                        if count == 1 { interrupted.withLock { $0 = true }; tour.cancel() } else { exit(ExitStatus.interrupted) }
                    }
                }
                defer { interrupts.cancel() }
                result = .success(try await tour.value)
            } catch {
                result = .failure(error)
            }
            await plane.killRuntimes()
            await group.triggerGracefulShutdown()
            await tasks.waitForAll()
            return result
        }
        logSink.close()
        let passed: Bool
        switch result {
        case .success(let value): passed = value
        case .failure(let error):
            c.clearStatus()
            if interrupted.value {
                c.error("\ndemo interrupted; its server is stopped" + (keep ? ", its files are kept in \(root.path)" : " and \(root.path) removed"))
                throw ExitCode(ExitStatus.interrupted)
            }
            if keep { c.error("the demo's files are kept in \(root.path) (server log: \(serverLog.path))") }
            throw error
        }
        if keep {
            c.line("   kept \(root.path): data dir \(root.appendingPathComponent("data").path), server log \(serverLog.path)")
            c.line(c.paint("   look again: cloud-agent serve --data-dir \(root.appendingPathComponent("data").path), then cloud-agent sessions list", .dim))
        } else {
            c.line("   server stopped, \(root.path) removed")
        }
        c.line()
        let took = humanDuration((clock.now - began).seconds)
        if passed {
            c.line(c.paint("✓ demo finished in \(took).", .green, .bold) + " Next: `cloud-agent serve`, then `cloud-agent run \"say hello\"`.")
        } else {
            c.line(c.paint("✗ demo finished in \(took), but a promise did not hold (see above).", .red, .bold))
        }
        return passed
    }

    /// Every step against the running server; true when the promises held.
    private func tour(api: APIClient, root: URL, sandboxUsed plane: ControlPlane, modelServer: String) async throws -> Bool {
        let c = console
        let timing = Self.timing
        func step(_ number: String, _ text: String) {
            c.line(c.paint(number, .cyan, .bold) + " " + c.paint(text, .bold))
        }
        func note(_ text: String) { c.line("   " + text) }

        step("①", "A control plane on \(api.baseURL)")
        note(
            c.paint(
                "data dir \(root.appendingPathComponent("data").path) · sandbox \(sandbox.rawValue) · idle timeout \(DurationText.format(milliseconds: timing.idleTimeoutMs)) · heartbeat every \(timing.heartbeatIntervalMs)ms · stale after \(DurationText.format(milliseconds: timing.staleThresholdMs))",
                .dim))

        let repo = root.appendingPathComponent("repo")
        try makeRepository(repo, log: root.appendingPathComponent("git.log"))
        step("②", "A git repository with one commit")
        note(c.paint(repo.path + " (README.md, hello.sh)", .dim))

        let prompt = agent == .scripted ? Self.script : DemoAgent.realPrompt
        var body: JSONValue = ["prompt": .string(prompt), "repo": ["url": .string(repo.path)], "agent": .string(agent.rawValue)]
        if agent != .scripted {
            let settings = agent.settings(modelServer: modelServer)
            body = [
                "prompt": .string(prompt), "repo": ["url": .string(repo.path)], "agent": .string(agent.rawValue), "envVars": settings.envVars,
                "secrets": settings.secrets,
            ]
        }
        let created = try await api.send(.POST, "/v1/sessions", body: body, timeout: .seconds(120)).json
        guard let session = created["sessionId"]?.stringValue else {
            throw CLIFailure(message: "the server's answer has no sessionId", exitCode: ExitStatus.executionFailed)
        }
        step("③", "A session with \(agent.title), on its own branch of that repository")
        note(session + c.paint(" · branch \(created["workBranch"]?.stringValue ?? "?") · runtime \(created["runtime"]?["state"]?.stringValue ?? "?")", .dim))
        if agent == .scripted {
            note(c.paint("its prompt, a script:", .dim))
            for line in Self.script.split(separator: "\n") { note(c.paint("  │ ", .dim) + line) }
        } else {
            await plane.sessions.agents.probeVersions(environment: plane.configuration.agentLookupEnvironment, logger: Logger(label: "cloud-agent-demo"))
            let entry = plane.sessions.agents.entry(named: agent.rawValue)
            note(c.paint("\(entry?.binary ?? "?") · \(entry?.version ?? "version unknown")", .dim))
            note(
                c.paint(
                    "its model: cloud-agent's scripted model server on \(modelServer) (offline, no key), which asks for tools the CLI runs in the workspace",
                    .dim))
            note(c.paint("its prompt: ", .dim) + prompt)
        }

        step("④", "Initiate it and stream its events live (what `cloud-agent run` shows)")
        let accepted = try await api.send(.POST, "/v1/sessions/\(APIClient.escape(session))/initiate").json
        guard let execution = accepted["executionId"]?.stringValue else {
            throw CLIFailure(message: "the server's answer has no executionId", exitCode: ExitStatus.executionFailed)
        }
        let monitor = Task { await Self.monitor(api: api, session: session, idleTimeoutMs: timing.idleTimeoutMs) }
        defer { monitor.cancel() }
        let watcher = Watcher(api: api, session: session, console: c, json: false)
        let tracker = Locked<Int64>(0)
        let end = try await withDeadline(seconds: 60, "the execution to end") {
            try await watcher.watch(StreamQuery(fromId: 0)) { event in
                tracker.withLock { $0 = event.id }
                return event.isExecutionEnd && event.executionId == execution
            }
        }
        monitor.cancel()
        let watch = await monitor.value
        let lastSeen = tracker.withLock { $0 }
        var passed = true
        guard let end, end.type == EventType.executionCompleted else {
            c.line(c.paint("✗ the execution did not complete: \(end?.type ?? "no end")", .red))
            return false
        }

        step(
            "⑤",
            "The agent was silent for \(Self.silence) s, longer than the \(DurationText.format(milliseconds: timing.idleTimeoutMs)) idle timeout, and its runtime was not stopped"
        )
        if watch.violations.isEmpty, watch.samples > 0 {
            note(c.paint("✓", .green) + " checked the session \(watch.samples) times while the execution ran: runtime `running` every time, no idle deadline")
            if watch.beyondTimeout > 0 {
                note(
                    c.paint("✓", .green)
                        + " \(watch.beyondTimeout) of those checks came more than the idle timeout after the agent's last output (up to \(humanDuration(watch.longestSilence)) of silence)"
                )
            }
            note(
                c.paint(
                    "  what kept it: \(watch.heartbeats) heartbeats, about every \(timing.heartbeatIntervalMs)ms (longest gap \(humanDuration(watch.longestHeartbeatGap)))",
                    .dim))
        } else {
            passed = false
            note(c.paint("✗ the runtime was not kept running while the agent worked:", .red))
            for violation in watch.violations.prefix(5) { note("  " + violation) }
        }

        step("⑥", "Now it is idle: its runtime is stopped \(DurationText.format(milliseconds: timing.idleTimeoutMs)) after its last activity")
        let idleTicker = Task { await Self.idleCountdown(api: api, session: session, console: c) }
        defer { idleTicker.cancel() }
        let stopped: StreamedEvent?
        do {
            stopped = try await withDeadline(seconds: 30, "the idle stop") {
                try await watcher.watch(StreamQuery(fromId: lastSeen)) { $0.type == EventType.runtimeStopped }
            }
        } catch {
            idleTicker.cancel()
            c.clearStatus()
            throw error
        }
        idleTicker.cancel()
        _ = await idleTicker.value
        c.clearStatus()
        let view = try await api.session(session)
        let reason = view["runtime"]?["stopReason"] ?? .null
        let completedAt = view["latestExecution"]?["completedAt"]?.dateValue
        if stopped != nil, reason["rule"]?.stringValue == "idle" {
            note("stop reason (GET /v1/sessions/\(session) → runtime.stopReason):")
            let lastActivity = reason["lastActivityAt"]?.dateValue
            let matches = lastActivity != nil && lastActivity == completedAt
            let rows: [(String, String)] = [
                ("rule", c.paint(reason["rule"]?.stringValue ?? "?", .bold)),
                ("lastActivityAt", humanTime(lastActivity) + c.paint(matches ? "  (the execution's completedAt)" : "", .dim)),
                ("idleMs", (reason["idleMs"]?.intValue.map(String.init) ?? "?") + c.paint("  (how long it had been idle)", .dim)),
                ("idleTimeoutMs", (reason["idleTimeoutMs"]?.intValue.map(String.init) ?? "?") + c.paint("  (the session's idle timeout)", .dim)),
                ("stoppedAt", humanTime(view["runtime"]?["stoppedAt"]?.dateValue)),
            ]
            for (label, value) in rows { note("  " + label.padding(toLength: 16, withPad: " ", startingAt: 0) + value) }
            note(c.paint("stop reason: rule idle", .green) + c.paint(" — the next message would cold-start it on the same workspace", .dim))
            if (reason["idleMs"]?.intValue ?? 0) < timing.idleTimeoutMs {
                passed = false
                note(c.paint("✗ stopped before the idle timeout", .red))
            }
        } else {
            passed = false
            note(c.paint("✗ the runtime did not stop for being idle: \(JSONText.encode(reason))", .red))
        }

        step("⑦", "Cleaning up")
        if keep {
            note("session \(session) kept (its runtime is stopped)")
        } else {
            try await api.send(.DELETE, "/v1/sessions/\(APIClient.escape(session))")
            note("session \(session) deleted")
        }
        return passed
    }

    /// What the session looked like while its execution ran.
    struct Watch: Sendable {
        var samples = 0
        var violations: [String] = []
        var beyondTimeout = 0
        var longestSilence = 0.0
        var heartbeats = 0
        var longestHeartbeatGap = 0.0
    }

    /// Polls the session every 100 ms while its execution is pending or running.
    static func monitor(api: APIClient, session: String, idleTimeoutMs: Int64) async -> Watch {
        var watch = Watch()
        var beats: [Date] = []
        while !Task.isCancelled {
            guard let view = try? await api.session(session) else {
                try? await Task.sleep(for: .milliseconds(100))
                continue
            }
            let now = Date()
            let latest = view["latestExecution"] ?? .null
            let status = latest["status"]?.stringValue ?? ""
            if status == "pending" || status == "running" {
                watch.samples += 1
                let state = view["runtime"]?["state"]?.stringValue ?? "?"
                if state != "running", status == "running" {
                    watch.violations.append("\(humanTime(now)): runtime \(state) while the execution was \(status)")
                }
                if view["activity"]?["idleDeadline"]?.dateValue != nil {
                    watch.violations.append("\(humanTime(now)): an idle deadline while the execution was \(status)")
                }
                if status == "running", let lastOutput = latest["progress"]?["lastEventAt"]?.dateValue {
                    let silence = now.timeIntervalSince(lastOutput)
                    watch.longestSilence = max(watch.longestSilence, silence)
                    if silence * 1000 > Double(idleTimeoutMs) { watch.beyondTimeout += 1 }
                }
                if let beat = latest["lastHeartbeat"]?.dateValue, beats.last != beat { beats.append(beat) }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        watch.heartbeats = beats.count
        // Gaps between the heartbeats seen (sampling at 100 ms sees nearly all at 200 ms).
        watch.longestHeartbeatGap = zip(beats, beats.dropFirst()).map { $1.timeIntervalSince($0) }.max() ?? 0
        return watch
    }

    /// On a terminal: a countdown to the idle deadline until cancelled.
    static func idleCountdown(api: APIClient, session: String, console: Console) async {
        guard console.isTerminal else { return }
        while !Task.isCancelled {
            if let view = try? await api.session(session) {
                let state = view["runtime"]?["state"]?.stringValue ?? "?"
                if let deadline = view["activity"]?["idleDeadline"]?.dateValue {
                    let left = deadline.timeIntervalSinceNow
                    console.status("◷ runtime \(state), idle · idle deadline in \(humanDuration(max(0, left)))")
                } else {
                    console.status("◷ runtime \(state)")
                }
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    /// A repository with a README and a script, one commit on `main`.
    private func makeRepository(_ repo: URL, log: URL) throws {
        try FileManager.default.createDirectory(at: repo, withIntermediateDirectories: true)
        try "# demo-app\n\nA tiny repository for the cloud-agent demo.\n".write(to: repo.appendingPathComponent("README.md"), atomically: true, encoding: .utf8)
        try "echo \"hello from hello.sh, running in the session's workspace\"\n".write(
            to: repo.appendingPathComponent("hello.sh"), atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        try git(["init", "-q", "-b", "main", "."], in: repo, log: log)
        try git(["add", "README.md", "hello.sh"], in: repo, log: log)
        try git(
            [
                "-c", "user.name=cloud-agent demo", "-c", "user.email=demo@cloud-agent.invalid", "-c", "commit.gpgsign=false",
                "commit", "-q", "-m", "A tiny demo app",
            ], in: repo, log: log)
    }

    private func git(_ arguments: [String], in directory: URL, log: URL) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git"] + arguments
        process.currentDirectoryURL = directory
        let handle = try FileHandle(forWritingTo: log)
        defer { try? handle.close() }
        handle.seekToEndOfFile()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        do { try process.run() } catch {
            throw CLIFailure(message: "the demo needs git: \(error)", exitCode: ExitStatus.executionFailed)
        }
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            throw CLIFailure(
                message: "git \(arguments.joined(separator: " ")) failed (exit \(process.terminationStatus)): \(output.suffix(500))",
                exitCode: ExitStatus.executionFailed
            )
        }
    }
}

/// Runs `body`, failing when it takes longer than `seconds`.
@discardableResult
func withDeadline<T: Sendable>(seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw CLIFailure(message: "timed out after \(humanDuration(seconds)) waiting for \(what)", exitCode: ExitStatus.executionFailed)
        }
        return value
    }
}

/// The demo's server log: one file, one line per log event.
final class FileLogSink: Sendable {
    private let handle: Mutex<FileHandle?>

    init(_ url: URL) throws {
        _ = FileManager.default.createFile(atPath: url.path, contents: nil)
        handle = Mutex(try FileHandle(forWritingTo: url))
    }

    func write(_ line: String) {
        handle.withLock { handle in handle?.write(Data((line + "\n").utf8)) }
    }

    func close() {
        handle.withLock { handle in
            try? handle?.close()
            handle = nil
        }
    }
}

struct FileLogHandler: LogHandler {
    let label: String
    let sink: FileLogSink
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let rendered = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        sink.write("\(Timestamp.format(Date())) \(event.level) \(label): \(event.message) \(rendered)")
    }
}
