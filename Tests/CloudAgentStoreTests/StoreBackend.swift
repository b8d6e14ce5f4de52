import CloudAgentCore
import CloudAgentTestSupport
import CloudAgentPostgres
import CloudAgentSQLite
import Foundation
import Logging

/// The `SessionStore` implementations the conformance suite runs against.
///
/// Every conformance test is `@Test(arguments: StoreBackend.allCases)`: a backend added later
/// only needs a new case here and a branch in `withStore(_:)`, and then runs the whole suite
/// unchanged.
enum StoreBackend: CaseIterable, CustomStringConvertible, Sendable {
    case memory
    case sqlite
    /// A database of its own in the test process's throwaway cluster (PostgresTestCluster).
    case postgres

    var description: String {
        switch self {
        case .memory: "memory"
        case .sqlite: "sqlite"
        case .postgres: "postgres"
        }
    }

    /// Runs `body` with a fresh, empty store, and removes what the store left afterwards, also
    /// when `body` throws.
    func withStore(_ body: (any SessionStore) async throws -> Void) async throws {
        switch self {
        case .memory:
            try await body(InMemorySessionStore())
        case .sqlite:
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            try await body(try SQLiteSessionStore(path: directory.path(for: "store.sqlite")))
        case .postgres:
            // A permit of the databases gate: the shared cluster serves a few test databases at
            // a time, not every conformance test at once.
            try await TestGate.databases.withPermits(1) {
                try await withPostgresTestDatabase { configuration in
                    try await withRunningPostgresStore(configuration, body)
                }
            }
        }
    }
}

/// A PostgreSQL store on `configuration`, migrated, its connection pool running for as long as
/// `body` runs.
func withRunningPostgresStore(
    _ configuration: PostgresConfiguration, _ body: (PostgresSessionStore) async throws -> Void
) async throws {
    // Quiet: the pool's connection chatter and the migrations' lines would drown the test output.
    let store = try PostgresSessionStore(
        configuration: configuration, logger: Logger(label: "cloud-agent.tests.postgres", factory: { _ in SwiftLogNoOpLogHandler() }))
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await store.run() }
        try await store.migrate()
        try await body(store)
        group.cancelAll()
    }
}

/// A new database in the test cluster for as long as `body` runs; dropped afterwards, also when
/// `body` throws.
func withPostgresTestDatabase(_ body: (PostgresConfiguration) async throws -> Void) async throws {
    let configuration = try await PostgresTestCluster.shared.createDatabase()
    do {
        try await body(configuration)
    } catch {
        try? await PostgresTestCluster.shared.dropDatabase(configuration.database)
        throw error
    }
    try await PostgresTestCluster.shared.dropDatabase(configuration.database)
}

/// Runs `body` with a fresh store of `backend` (see `StoreBackend.withStore(_:)`).
func withStore(_ backend: StoreBackend, _ body: (any SessionStore) async throws -> Void) async throws {
    try await backend.withStore(body)
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
        session.runtime = .stopped(
            RuntimeStatus.Stopped(
                startedAt: date(11), requestedAt: date(10), stoppedAt: date(19),
                stopReason: StopReason(rule: .idle, at: date(19), lastActivityAt: date(12), idleMs: 7, idleTimeoutMs: 900_000, detail: "quiet")
            ))
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
