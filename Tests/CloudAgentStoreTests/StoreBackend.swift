import CloudAgentCore
import CloudAgentSQLite
import Foundation

/// The `SessionStore` implementations the conformance suite runs against.
///
/// Every conformance test is `@Test(arguments: StoreBackend.allCases)`: a backend added later
/// (e.g. `.postgres`, backed by postgres-nio) only needs a new case here and a branch in `make()`,
/// and then runs the whole suite unchanged.
enum StoreBackend: CaseIterable, CustomStringConvertible, Sendable {
    case memory
    case sqlite

    /// Removes whatever the store left on disk. Call it once the test is done with the store.
    typealias Cleanup = @Sendable () -> Void

    var description: String {
        switch self {
        case .memory: "memory"
        case .sqlite: "sqlite"
        }
    }

    /// A fresh, empty store, and how to clean up after it.
    func make() async throws -> (store: any SessionStore, cleanup: Cleanup) {
        switch self {
        case .memory:
            return (InMemorySessionStore(), {})
        case .sqlite:
            let directory = try TemporaryDirectory()
            do {
                let store = try SQLiteSessionStore(path: directory.path(for: "store.sqlite"))
                return (store, { directory.remove() })
            } catch {
                directory.remove()
                throw error
            }
        }
    }
}

/// Creates a store, runs `body` with it and cleans up afterwards, also when `body` throws.
func withStore(_ backend: StoreBackend, _ body: (any SessionStore) async throws -> Void) async throws {
    let (store, cleanup) = try await backend.make()
    defer { cleanup() }
    try await body(store)
}

/// A fresh directory under the system's temporary directory.
struct TemporaryDirectory: Sendable {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("cloud-agent-store-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func path(for file: String) -> String { url.appendingPathComponent(file).path }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// Test data. Every timestamp is a whole number of milliseconds, the precision stores keep.
enum Fixture {
    static let epochMs: Int64 = 1_760_000_000_123

    /// `epoch + offsetMs`, in milliseconds.
    static func date(_ offsetMs: Int64) -> Date { Date(millisecondsSince1970: epochMs + offsetMs) }

    static let alice = Owner(user: "alice")
    static let bob = Owner(user: "bob")
    static let aliceAtX = Owner(user: "alice", org: "org-x")

    static func session(
        owner: Owner = alice, createdAt: Date = date(0), id: SessionID = SessionID(), prompt: String = "do the thing"
    ) -> SessionRecord {
        SessionRecord(id: id, owner: owner, createdAt: createdAt, spec: SessionSpec(prompt: prompt))
    }

    /// A session with every optional part of its spec filled, secrets sealed with `box`.
    static func fullSession(box: SecretBox, secret: String = "s3cr3t-value", owner: Owner = aliceAtX) -> SessionRecord {
        let spec = SessionSpec(
            prompt: "fix the flaky test", agent: "scripted", mode: "code", model: "model-1",
            repo: RepoSpec(url: "https://example.com/repo.git", branch: "main", token: box.seal("repo-\(secret)")),
            envVars: ["GREETING": "hello", "EMPTY": ""],
            secrets: ["API_KEY": box.seal(secret), "OTHER": box.seal("other-\(secret)")],
            setupCommands: ["make deps", "make build"], autoCommit: true,
            callback: CallbackSpec(url: "https://example.com/hook", headers: ["Authorization": box.seal("Bearer \(secret)")]),
            idleTimeoutMs: 900_000
        )
        var session = SessionRecord(id: SessionID(), owner: owner, createdAt: date(0), spec: spec, workBranch: "cloud-agent/work")
        session.preparedAt = date(5)
        session.initiatedAt = date(10)
        session.updatedAt = date(20)
        session.runtime = RuntimeStatus(
            state: .stopped, startedAt: date(11), requestedAt: date(10), stoppedAt: date(19),
            stopReason: StopReason(rule: .idle, at: date(19), lastActivityAt: date(12), idleMs: 7, idleTimeoutMs: 900_000, detail: "quiet")
        )
        session.activeExecutionId = ExecutionID(at: date(10))
        session.executionCount = 3
        return session
    }

    static func execution(of session: SessionID, at offsetMs: Int64, prompt: String = "step") -> Execution {
        Execution(id: ExecutionID(at: date(offsetMs)), sessionId: session, prompt: prompt, acceptedAt: date(offsetMs))
    }

    static func running(of session: SessionID, at offsetMs: Int64, heartbeat: Int64? = nil) throws -> Execution {
        var execution = Self.execution(of: session, at: offsetMs)
        try execution.markRunning(at: date(offsetMs + 1))
        if let heartbeat { try execution.recordHeartbeat(at: date(heartbeat)) }
        return execution
    }

    static func completed(of session: SessionID, at offsetMs: Int64) throws -> Execution {
        var execution = try Self.running(of: session, at: offsetMs)
        try execution.end(.completed, at: date(offsetMs + 2), exitCode: 0, reportedByRuntime: true)
        return execution
    }

    static func event(_ type: String = EventType.output, at offsetMs: Int64, execution: ExecutionID? = nil, data: [String: JSONValue] = [:])
        -> NewEvent
    {
        NewEvent(executionId: execution, type: type, at: date(offsetMs), data: data)
    }
}

extension SessionStore {
    /// Inserts a session with default contents and returns it.
    @discardableResult
    func insertFixtureSession(owner: Owner = Fixture.alice, createdAt: Date = Fixture.date(0)) async throws -> SessionRecord {
        let session = Fixture.session(owner: owner, createdAt: createdAt)
        try await insertSession(session)
        return session
    }

    /// All of a session's events.
    func allEvents(of session: SessionID) async throws -> [Event] {
        try await events(of: session, EventQuery(afterId: 0, limit: 10_000))
    }
}
