import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import NIOHTTP1
#if canImport(Glibc)
    import Glibc
#endif

/// `coldstart`: against a real control plane launching real `cloud-agent-runtime` processes,
/// (1) prepare with a local git repository: `POST /v1/sessions` sent → the runtime connected
/// (`runtime.startedAt`: clone, branch, launch, connect, hello); (2) a message to a session whose
/// runtime was stopped: `POST …/messages` sent → `execution.running` (workspace check, launch,
/// connect, execute, the agent process started) — the agent's own work excluded.
struct ColdStartBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coldstart", abstract: "Prepare (clone + runtime connected) and a message to a stopped runtime until execution.running."
    )

    @OptionGroup var options: BenchOptions
    @Option(help: "Sessions measured (default: 20, quick: 3).") var iterations: Int?
    @Option(help: "Sandbox of the runtimes: none, bwrap, auto (the product's default).") var sandbox: String = "auto"

    func run() async throws {
        let iterations = self.iterations ?? (options.quick ? 3 : 20)
        guard let sandboxMode = SandboxMode(rawValue: sandbox) else { throw BenchFailure("unknown sandbox \(sandbox)") }
        let runtime = try Products.locate("cloud-agent-runtime", note: options.note)
        let scratch = try ScratchDirectory("coldstart")
        defer { scratch.remove() }

        // A local repository with a little history and a few files.
        let repo = scratch.url.appendingPathComponent("origin")
        try FileManager.default.createDirectory(at: repo, withIntermediateDirectories: true)
        try shell(
            """
            git init -q -b main . && mkdir -p src docs \
            && for i in $(seq 1 40); do echo "line $i of file $i" > src/file$i.txt; done \
            && echo "# benchmark repo" > README.md && git add -A \
            && git -c user.name=bench -c user.email=bench@example.com commit -q -m initial \
            && for i in $(seq 1 10); do echo "change $i" >> docs/changes.md && git add -A \
            && git -c user.name=bench -c user.email=bench@example.com commit -q -m "change $i"; done
            """, in: repo)

        let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 1000, staleThresholdMs: 10_000, stopGraceMs: 2000)
        let configuration = InProcessServer.configuration(directory: scratch.url, timing: timing, sandbox: sandboxMode, runtime: runtime)
        let server = try await InProcessServer.start(configuration, logLevel: options.logLevel)
        let api = BenchAPI(baseURL: server.baseURL, token: InProcessServer.token)
        let store = server.plane.store
        options.note("coldstart: \(iterations) sessions on a local repository, sandbox \(sandbox)")
        var prepare = Latencies(), message = Latencies()
        do {
            for index in 0..<iterations {
                // (1) Prepare: request sent → runtime connected.
                let sent = Date()
                let created = try await api.expect(
                    201, .POST, "/v1/sessions",
                    json: [
                        "prompt": "say hello", "repo": ["url": .string(repo.path)],
                    ])
                guard let id = created["sessionId"]?.stringValue.flatMap(SessionID.init(rawValue:)) else { throw BenchFailure("no sessionId") }
                guard await waitUntil(30, everyMs: 2, { (try? await store.session(id))?.runtime.state == .running }),
                    let connected = try await store.session(id)?.runtime.startedAt
                else { throw BenchFailure("the runtime of \(id) did not connect") }
                prepare.record(micros: UInt64(max(0, connected.timeIntervalSince(sent) * 1_000_000)))

                // Run once, then have the runtime stopped by the idle rule.
                try await api.expect(202, .POST, "/v1/sessions/\(id)/initiate")
                guard await waitUntil(30, everyMs: 10, { (try? await store.session(id))?.activeExecutionId == nil }) else {
                    throw BenchFailure("the first execution of \(id) did not end")
                }
                try await api.expect(200, .PATCH, "/v1/sessions/\(id)", json: ["idleTimeoutMs": 1])
                guard await waitUntil(30, everyMs: 10, { (try? await store.session(id))?.runtime.state == .stopped }) else {
                    throw BenchFailure("the runtime of \(id) was not stopped")
                }
                try await api.expect(200, .PATCH, "/v1/sessions/\(id)", json: ["idleTimeoutMs": 60_000])

                // (2) A message to the stopped runtime: request sent → execution.running.
                let asked = Date()
                let accepted = try await api.expect(202, .POST, "/v1/sessions/\(id)/messages", json: ["prompt": "say again"])
                guard let executionId = accepted["executionId"]?.stringValue.flatMap(ExecutionID.init(rawValue:)) else {
                    throw BenchFailure("no executionId: \(accepted.json)")
                }
                guard await waitUntil(30, everyMs: 2, { (try? await store.execution(executionId))?.runningAt != nil }),
                    let running = try await store.execution(executionId)?.runningAt
                else { throw BenchFailure("the message to \(id) never ran") }
                message.record(micros: UInt64(max(0, running.timeIntervalSince(asked) * 1_000_000)))
                _ = await waitUntil(30, everyMs: 10) { (try? await store.session(id))?.activeExecutionId == nil }
                try await api.expect(204, .DELETE, "/v1/sessions/\(id)")
                options.note("coldstart: \(index + 1)/\(iterations)")
            }
        } catch {
            await server.plane.killRuntimes()
            await server.stop()
            throw error
        }
        await server.plane.killRuntimes()
        await server.stop()
        let params: [String: JSONValue] = [
            "iterations": .number(Double(iterations)), "sandbox": .string(sandbox), "repo": "local path, 11 commits, 42 files",
            "prepare": .object(prepare.summary), "message": .object(message.summary), "value": "median of the iterations",
            "clock": "wall clock, stored timestamps at 1 ms",
        ]
        options.emit([
            Figure("coldstart.prepare_ms", prepare.percentileMs(50), unit: "ms (p50)", params: params),
            Figure("coldstart.message_ms", message.percentileMs(50), unit: "ms (p50)", params: params),
        ])
    }
}
