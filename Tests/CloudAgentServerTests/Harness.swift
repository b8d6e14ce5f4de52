import CloudAgentTestSupport
import CloudAgentCLI
import CloudAgentCore
import CloudAgentSandbox
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import Testing

/// A JSON response: the status and the decoded body.
struct APIResponse: Sendable {
    var status: Int
    var json: JSONValue
    var text: String

    subscript(_ key: String) -> JSONValue? { json.objectValue?[key] }
    var errorCode: String? { json.objectValue?["error"]?.objectValue?["code"]?.stringValue }
    var errorField: String? { json.objectValue?["error"]?.objectValue?["field"]?.stringValue }
}

/// A control plane running on a real socket for one test, with its data directory.
struct TestServer {
    static let localToken = "local-test-token-0123456789"

    let directory: TemporaryDirectory
    var timing: Timing
    var maxRuntimes = 32
    /// What `auto` picks on this machine (bwrap wherever it works), as users run it. A test
    /// that needs another says why.
    var sandbox: SandboxMode = .auto
    var runtimeExecutable = TestServer.buildProducts.appendingPathComponent("cloud-agent-runtime")
    var streamBufferEvents = 1024
    var streamTicketLifetimeMs: Int64 = 60_000
    var callbackRetryBaseMs: Int64 = 2000
    /// `CLOUD_AGENT_<NAME>_BIN` settings, on top of this process's PATH.
    var agentBinaries: [String: String] = [:]
    var agentsFile: String?
    var maxRuntimesPerUser: Int?
    var userDailyBudgetUsd: Double?
    var eventCaps = EventCaps.default
    let logs = LogCapture()

    /// The orphan limit of the runtimes test servers launch, unless a test sets its own: a
    /// runtime left behind by a stopped test server ends itself, and the limit is far above the
    /// downtime of the tests that restart a control plane and expect its runtimes back.
    static let orphanLimit = "30s"
    static let orphanLimitMs: Int64 = 30_000

    init(directory: TemporaryDirectory? = nil, timing: Timing = Timing()) throws {
        self.directory = try directory ?? TemporaryDirectory()
        self.timing = timing
        if timing.orphanLimitMs == Timing().orphanLimitMs { self.timing.orphanLimitMs = Self.orphanLimitMs }
    }

    /// `Tests/Fixtures`, found from this file's path.
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    /// The package's build products (`.build/debug`), found from this file's path.
    static let buildProducts: URL = {
        if let override = ProcessInfo.processInfo.environment["CLOUD_AGENT_BUILD_DIR"] { return URL(fileURLWithPath: override) }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug")
    }()

    var configuration: ServerConfiguration {
        var configuration = ServerConfiguration(
            host: "127.0.0.1", port: 0, dataDirectory: directory.url.appendingPathComponent("data"),
            apiToken: Self.localToken, timing: timing, maxRuntimes: maxRuntimes, sandbox: sandbox, secretKey: nil, logLevel: .trace
        )
        configuration.runtimeExecutable = runtimeExecutable
        configuration.streamBufferEvents = streamBufferEvents
        configuration.streamTicketLifetimeMs = streamTicketLifetimeMs
        configuration.callbackRetryBaseMs = callbackRetryBaseMs
        configuration.agentLookupEnvironment.merge(agentBinaries) { _, new in new }
        configuration.agentsFile = agentsFile
        configuration.maxRuntimesPerUser = maxRuntimesPerUser
        configuration.userDailyBudgetUsd = userDailyBudgetUsd
        configuration.eventCaps = eventCaps
        return configuration
    }

    /// Starts the control plane, runs `body` against it over HTTP, and shuts it down. Unless
    /// `keepRuntimes`, every runtime it launched is killed afterwards (runtimes outlive their
    /// control plane by design).
    func run(keepRuntimes: Bool = false, _ body: @Sendable (TestAPI) async throws -> Void) async throws {
        let plane = try await ControlPlane.open(configuration, store: try StoreFactory.openSQLite(configuration), logger: logs.logger)
        do {
            try await plane.buildApplication().test(.live) { client in
                try await body(TestAPI(client: client, plane: plane))
            }
        } catch {
            await plane.killRuntimes()
            throw error
        }
        if !keepRuntimes { await plane.killRuntimes() }
    }
}

/// Requests against a running test server.
struct TestAPI: Sendable {
    let client: any TestClientProtocol
    let plane: ControlPlane

    @discardableResult
    func request(_ method: HTTPRequest.Method, _ path: String, token: String? = TestServer.localToken, body: String? = nil) async throws -> APIResponse {
        var headers: HTTPFields = [:]
        if let token { headers[.authorization] = "Bearer \(token)" }
        if body != nil { headers[.contentType] = "application/json" }
        let response = try await client.execute(uri: path, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) })
        let text = String(buffer: response.body)
        let json = text.isEmpty ? JSONValue.null : ((try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null)
        return APIResponse(status: Int(response.status.code), json: json, text: text)
    }

    func request(_ method: HTTPRequest.Method, _ path: String, token: String? = TestServer.localToken, json: JSONValue) async throws -> APIResponse {
        let data = try JSONEncoder().encode(json)
        return try await request(method, path, token: token, body: String(decoding: data, as: UTF8.self))
    }

    /// The session's runtime launch as the store records it.
    func runtimeProcess(_ id: SessionID) async throws -> SpawnedProcess {
        let process = try #require(try await plane.store.session(id)?.runtime.process, "no runtime process for \(id)")
        return SpawnedProcess(pid: process.pid, startTime: process.startTime)
    }

    /// SIGKILL to the session's runtime and everything of its launch (its agent included).
    func killRuntime(_ id: SessionID) async throws {
        ProcessControl.killTree(try await runtimeProcess(id))
    }

    /// The depth of the runtime itself in its launch's process tree: 0 without a sandbox, 2
    /// under bwrap (below the launched bwrap and the sandbox's init).
    func runtimeDepth(_ id: SessionID) async throws -> Int {
        try await plane.store.session(id)?.runtime.sandbox == "bwrap" ? 2 : 0
    }

    /// The runtime process itself (what a test signals to make a runtime die, freeze or shut
    /// down), found in the kernel's process tree of the recorded launch.
    func runtimeItself(_ id: SessionID) async throws -> SpawnedProcess {
        let depth = try await runtimeDepth(id)
        return try #require(ProcessTree.of(try await runtimeProcess(id)).at(depth: depth).first, "no runtime process below the launch of \(id)")
    }

    /// The processes below the session's runtime (its agent and what that started), found in
    /// the kernel's process tree: below depth 0 without a sandbox, below depth 2 under bwrap.
    func agentProcesses(_ id: SessionID) async throws -> [SpawnedProcess] {
        let runtimeDepth = try await runtimeDepth(id)
        return ProcessTree.of(try await runtimeProcess(id)).members.filter { $0.depth > runtimeDepth }.map(\.process)
    }

    /// Creates a session and returns its id.
    func createSession(_ body: JSONValue = ["prompt": "say hello"], token: String = TestServer.localToken) async throws -> SessionID {
        let response = try await request(.post, "/v1/sessions", token: token, json: body)
        try #require(response.status == 201, "create failed: \(response.text)")
        return try #require(response["sessionId"]?.stringValue.flatMap(SessionID.init(rawValue:)))
    }
}

/// A real git repository in `directory/name` with one commit on `main` (and `extraBranches`).
func makeGitRepository(in directory: TemporaryDirectory, name: String = "origin", extraBranches: [String] = []) async throws -> URL {
    let repo = directory.url.appendingPathComponent(name)
    try FileManager.default.createDirectory(at: repo, withIntermediateDirectories: true)
    try await shell(
        """
        git init -q -b main . && echo "# demo" > README.md && git add README.md \
        && git -c user.name=test -c user.email=test@example.com commit -q -m initial
        """, in: repo)
    for branch in extraBranches { try await shell("git branch \(branch)", in: repo) }
    return repo
}

/// A session view without its live parts (runtime state and activity change on their own).
func stableView(_ view: JSONValue) -> JSONValue {
    .object((view.objectValue ?? [:]).filter { $0.key != "runtime" && $0.key != "activity" })
}

extension TestAPI {
    /// The session's first pending input request, once there is one.
    func pendingInput(_ id: SessionID, within seconds: Double = 30) async throws -> JSONValue {
        try await eventuallyValue(within: seconds, "a pending input request") {
            try await request(.get, "/v1/sessions/\(id)/input-requests")["requests"]?.arrayValue?.first { $0["status"] == "pending" }
        }
    }

    /// Answers `request` (as `pendingInput` gave it) with `body`.
    func answerInput(_ id: SessionID, _ request: JSONValue, _ body: JSONValue) async throws -> APIResponse {
        try await self.request(.post, "/v1/sessions/\(id)/input-requests/\(request["requestId"]?.stringValue ?? "")", json: body)
    }
}
