import CloudAgentCore
import CloudAgentPostgres
import CloudAgentTestSupport
import Foundation
import Testing
#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif
#if canImport(Glibc)
    import Glibc
#endif

/// The store a `serve` process of a test runs on.
enum ServeStore: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres

    var testDescription: String { rawValue }

    /// The environment that points `serve` at this store: nothing for SQLite (a file in the data
    /// directory), a fresh database of the tests' PostgreSQL otherwise.
    func environment() async throws -> [String: String] {
        switch self {
        case .sqlite: return [:]
        case .postgres: return ["CLOUD_AGENT_DATABASE_URL": Self.url(try await PostgresTestCluster.shared.createDatabase())]
        }
    }

    static func url(_ database: PostgresConfiguration) -> String {
        "postgres://\(database.username)@\(database.host):\(database.port)/\(database.database)?sslmode=disable"
    }
}

/// One `cloud-agent serve` in a test's directory, started and restarted on the same port and
/// data directory, with the sandbox `auto` picks (bwrap where it works, as users run it).
final class ServeUnderTest: @unchecked Sendable {
    static let token = "restart-test-token-0123456789"
    let directory: TemporaryDirectory
    let port: Int
    let environment: [String: String]
    private(set) var servers: [SpawnedCommand] = []

    init(store: ServeStore, extra: [String: String] = [:]) async throws {
        directory = try TemporaryDirectory()
        port = try freeLoopbackPort()
        var environment = [
            "CLOUD_AGENT_PORT": String(port), "CLOUD_AGENT_DATA_DIR": directory.url.appendingPathComponent("data").path,
            "CLOUD_AGENT_API_TOKEN": Self.token, "CLOUD_AGENT_HEARTBEAT_INTERVAL": "150ms", "CLOUD_AGENT_STALE_THRESHOLD": "3s",
            "CLOUD_AGENT_IDLE_TIMEOUT": "60s", "CLOUD_AGENT_STOP_GRACE": "1s", "CLOUD_AGENT_PENDING_TIMEOUT": "30s",
            "CLOUD_AGENT_NODE_HEARTBEAT": "200ms", "CLOUD_AGENT_NODE_LEASE": "1s", "CLOUD_AGENT_LOG_LEVEL": "info",
        ]
        environment.merge(try await store.environment()) { _, new in new }
        environment.merge(extra) { _, new in new }
        self.environment = environment
    }

    var client: HTTPClient { HTTPClient(baseURL: URL(string: "http://127.0.0.1:\(port)")!) }
    var current: SpawnedCommand? { servers.last }

    func start() async throws {
        let server = try SpawnedCommand(["serve"], environment: environment, in: directory.url)
        servers.append(server)
        let running = try await RunningServer.awaitBanner(server)
        try #require(running.port == port, "restarted on another port")
    }

    /// Stops the running `serve` with `signal` and waits for it to exit.
    func stop(with signal: Int32) async throws {
        let server = try #require(current)
        server.signal(signal)
        try #require(try await server.waitForExit(within: 20), "serve did not exit on signal \(signal):\n\(server.diagnostics)")
    }

    func request(_ method: String, _ path: String, json: JSONValue? = nil) async throws -> APIResponse {
        try await client.request(method, path, token: Self.token, json: json)
    }

    /// Creates and initiates a session running `prompt`; its id.
    func initiate(_ prompt: String, idleTimeoutMs: Int64? = nil) async throws -> String {
        var body: [String: JSONValue] = ["prompt": .string(prompt)]
        if let idleTimeoutMs { body["idleTimeoutMs"] = .number(Double(idleTimeoutMs)) }
        let created = try await request("POST", "/v1/sessions", json: .object(body))
        try #require(created.status == 201, "\(created.text)")
        let id = try #require(created["sessionId"]?.stringValue)
        #expect(created["sandbox"]?.stringValue == (await bwrapWorks() ? "bwrap" : "none"), "the sandbox auto picks")
        let started = try await request("POST", "/v1/sessions/\(id)/initiate")
        try #require(started.status == 202, "\(started.text)")
        return id
    }

    func events(_ id: String) async throws -> [JSONValue] {
        try await request("GET", "/v1/sessions/\(id)/events?limit=1000")["events"]?.arrayValue ?? []
    }

    func waitForTicks(_ id: String, atLeast count: Int) async throws {
        try await eventually(within: 30, "the agent's first ticks") {
            try await self.events(id).filter { $0["type"] == "agent" }.count >= count
        }
    }

    func waitForEnd(_ id: String, within seconds: Double = 60) async throws -> APIResponse {
        try await eventually(within: seconds, "the execution to end") {
            let status = try await self.request("GET", "/v1/sessions/\(id)")["latestExecution"]?["status"]?.stringValue
            return status == "completed" || status == "failed" || status == "interrupted"
        }
        return try await request("GET", "/v1/sessions/\(id)")
    }

    /// Every runtime and agent of the test is stopped, every server too; logs of a failure kept.
    func tearDown(part: String) {
        for server in servers { server.forceStop() }
        Reliability.killProcesses(under: directory.url)
        Reliability.keepLogs(of: part, from: directory.url)
    }

    var diagnostics: String { servers.map { $0.stderr.suffix(5000) }.joined(separator: "\n---\n") }
}

/// The agent's texts and event ids: the ticks exactly once, ids without gaps.
func expectEveryEventOnce(_ list: [JSONValue], ticks: Int, sourceLocation: SourceLocation = #_sourceLocation) {
    let ids = list.compactMap { $0["id"]?.intValue }
    #expect(ids == Array(1...Int64(max(ids.count, 1))), "ids with gaps or repeats: \(ids)", sourceLocation: sourceLocation)
    let texts = list.filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
    #expect(texts == (1...ticks).map { "tick \($0)/\(ticks)" } + ["finished"], "agent events not exactly once: \(texts)", sourceLocation: sourceLocation)
    #expect(list.filter { $0["type"] == "execution.failed" }.isEmpty, sourceLocation: sourceLocation)
}

/// Deploys and crashes: `serve` goes away mid-execution, under the sandbox users run (bwrap),
/// on SQLite and on PostgreSQL, and the agent never notices.
@Suite("The control plane dies or is restarted mid-execution, under the default sandbox", .processes)
struct ControlPlaneCrashTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var store: ServeStore
        var signal: Int32
        var testDescription: String { "\(store.rawValue), \(signal == SIGKILL ? "kill -9" : "SIGTERM")" }
    }

    static let cases = ServeStore.allCases.flatMap { store in [SIGTERM, SIGKILL].map { Case(store: store, signal: $0) } }

    @Test(
        "serve stopped mid-execution (SIGTERM: a deploy; kill -9: a crash), down longer than the stale threshold, started again: the same sandboxed runtime finishes the execution, every agent event exactly once, ids without gaps",
        arguments: cases
    )
    func restartMidExecution(_ test: Case) async throws {
        let serve = try await ServeUnderTest(store: test.store)
        defer { serve.tearDown(part: "restart-\(test.store.rawValue)-\(test.signal)") }
        try await serve.start()
        let id = try await serve.initiate("tick 100 0.05\nsay finished")
        try await serve.waitForTicks(id, atLeast: 5)
        let launched = try await serve.request("GET", "/v1/sessions/\(id)")["runtime"]?["startedAt"]?.stringValue

        let stoppedAt = ContinuousClock.now
        try await serve.stop(with: test.signal)
        if test.signal == SIGTERM {
            #expect(serve.current?.exitStatus == 0, "a graceful stop: \(serve.diagnostics)")
        }
        // Down for longer than the stale threshold: downtime must not count against the runtime,
        // whose agent keeps ticking in its sandbox meanwhile.
        try await Task.sleep(for: .milliseconds(3500))
        try await serve.start()
        let downtime = ContinuousClock.now - stoppedAt

        let session = try await serve.waitForEnd(id)
        #expect(session["latestExecution"]?["status"] == "completed", "\(session.text)\n\(serve.diagnostics)")
        #expect(session["runtime"]?["state"] == "running", "the runtime lives on: \(session.text)")
        #expect(session["runtime"]?["startedAt"]?.stringValue == launched, "the same runtime, not a new one")
        let list = try await serve.events(id)
        expectEveryEventOnce(list, ticks: 100)
        #expect(list.filter { $0["type"] == "runtime.started" }.count == 1, "no second runtime was started")
        #expect(list.filter { $0["type"] == "runtime.stopped" }.isEmpty)
        Reliability.report(
            "restart",
            "\(test.testDescription), sandbox \(session["sandbox"]?.stringValue ?? "?"): serve down \(downtime) (stale threshold 3 s); the same runtime finished; \(list.count) events, ids 1…\(list.count) without a gap, 100 ticks once, no failure"
        )

        #expect(try await serve.request("DELETE", "/v1/sessions/\(id)").status == 204)
        try await eventually(within: 15, "nothing of the sandbox left") { Reliability.processes(under: serve.directory.url).count == 1 }
        try await serve.stop(with: SIGTERM)
    }
}
