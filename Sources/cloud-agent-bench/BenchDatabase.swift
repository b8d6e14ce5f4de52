import ArgumentParser
import CloudAgentCLI
import CloudAgentCore
import CloudAgentPostgres
import CloudAgentEngine
import CloudAgentServer
import CloudAgentTestSupport
import Foundation
import GRDB
import Logging
import PostgresNIO
import Synchronization

/// Which store a benchmark runs on: SQLite (the default) or PostgreSQL, a throwaway cluster the
/// bench starts itself (`--postgres`) or the server of `--database-url`. On PostgreSQL every
/// figure's name gets the suffix `.postgres`, so that a report shows both stores side by side.
struct StoreOptions: ParsableArguments {
    @Option(
        name: .customLong("database-url"),
        help:
            "Run on this PostgreSQL server (postgres://user:pass@host:port/db). Each measurement creates a database of its own there and drops it after: the user needs CREATEDB."
    )
    var databaseURL: String?

    @Flag(help: "Run on PostgreSQL in a throwaway cluster the bench starts (initdb in a temp dir) and stops.")
    var postgres = false

    var onPostgres: Bool { postgres || databaseURL != nil }

    /// A figure's name on this store.
    func name(_ figure: String) -> String { onPostgres ? figure + Self.postgresSuffix : figure }

    static let postgresSuffix = ".postgres"

    func validate() throws {
        if postgres, databaseURL != nil { throw ValidationError("--postgres starts a cluster of its own; give it or --database-url, not both") }
        if let databaseURL {
            do { _ = try PostgresConfiguration(url: databaseURL) } catch { throw ValidationError("--database-url: \(error)") }
        }
    }

    /// Runs `body` with the benchmark's databases; a throwaway cluster is started first and
    /// stopped after, and databases made on a given server are dropped after.
    func withDatabases<Result: Sendable>(note: (String) -> Void, _ body: (BenchDatabases) async throws -> Result) async throws -> Result {
        guard onPostgres else { return try await body(BenchDatabases(server: nil)) }
        let server: PostgresServer
        if let databaseURL {
            server = PostgresServer(admin: try PostgresConfiguration(url: databaseURL), cluster: nil)
        } else {
            note("starting a throwaway PostgreSQL cluster (initdb in a temp dir)")
            // `synchronous_commit=off`: a commit does not wait for its WAL flush (durable against a crash
            // of the process, like SQLite's WAL with `synchronous=NORMAL`); fsync stays on.
            let cluster = try await ThrowawayPostgres.start(settings: ["synchronous_commit=off", "max_connections=200"], name: "cloud-agent-bench-pg")
            server = PostgresServer(admin: PostgresServer.superuser(port: cluster.port, database: "postgres"), cluster: cluster)
            note("PostgreSQL \(cluster.directory) listening on 127.0.0.1:\(cluster.port)")
        }
        let databases = BenchDatabases(server: server)
        do {
            let result = try await body(databases)
            await server.finish()
            return result
        } catch {
            await server.finish()
            throw error
        }
    }
}

/// Hands out one fresh database per measurement.
struct BenchDatabases: Sendable {
    /// nil: SQLite.
    let server: PostgresServer?

    /// A database of its own: the SQLite file in the measurement's data directory, or a new
    /// PostgreSQL database.
    func fresh() async throws -> BenchDatabase {
        guard let server else { return .sqlite }
        return .postgres(try await server.createDatabase())
    }

    /// A figure's parameters, naming the store when it is PostgreSQL (SQLite figures keep theirs as they were).
    func tagged(_ params: [String: JSONValue]) -> [String: JSONValue] {
        guard server != nil else { return params }
        return params.merging(["store": .string(storeDescription)]) { _, new in new }
    }

    /// The store, for a figure's parameters.
    var storeDescription: String {
        guard let server else { return "SQLite (WAL) in a temp dir" }
        return server.cluster == nil
            ? "PostgreSQL at \(server.admin.host):\(server.admin.port), a database per measurement"
            : "PostgreSQL 15, throwaway cluster on loopback (synchronous_commit=off), a database per measurement"
    }
}

/// One measurement's database.
enum BenchDatabase: Sendable {
    /// The SQLite file in the data directory.
    case sqlite
    case postgres(PostgresConfiguration)

    /// `CLOUD_AGENT_DATABASE_URL` (`--database-url` of `serve`); nil for SQLite in the data directory.
    var url: String? {
        guard case .postgres(let configuration) = self else { return nil }
        return Self.url(of: configuration)
    }

    static func url(of configuration: PostgresConfiguration) -> String {
        let user = configuration.username.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? configuration.username
        let password = configuration.password.map { ":" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0) } ?? ""
        let database = configuration.database.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? configuration.database
        return "postgres://\(user)\(password)@\(configuration.host):\(configuration.port)/\(database)"
            + (configuration.tls == .require ? "?sslmode=require" : "")
    }
}

/// A PostgreSQL server the bench makes databases on: its throwaway cluster or the given one.
final class PostgresServer: Sendable {
    /// Where CREATE and DROP DATABASE are sent from.
    let admin: PostgresConfiguration
    let cluster: ThrowawayPostgres?
    private let created = Mutex<[String]>([])

    init(admin: PostgresConfiguration, cluster: ThrowawayPostgres?) {
        self.admin = admin
        self.cluster = cluster
    }

    static func superuser(port: Int, database: String) -> PostgresConfiguration {
        PostgresConfiguration(host: "127.0.0.1", port: port, username: ThrowawayPostgres.superuser, password: nil, database: database)
    }

    static let logger = Logger(label: "cloud-agent-bench.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    func createDatabase() async throws -> PostgresConfiguration {
        let name = "bench_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        try await withPostgresClient(admin) { client in
            _ = try await client.query("CREATE DATABASE \(unescaped: name)", logger: Self.logger).collect()
        }
        created.withLock { $0.append(name) }
        var configuration = admin
        configuration.database = name
        return configuration
    }

    /// Drops the databases made on a given server; stops a throwaway cluster (which takes its
    /// databases with it).
    func finish() async {
        if let cluster {
            cluster.stop()
            return
        }
        for name in created.withLock({ $0 }) {
            try? await withPostgresClient(admin) { client in
                _ = try await client.query("DROP DATABASE IF EXISTS \(unescaped: name) WITH (FORCE)", logger: Self.logger).collect()
            }
        }
    }
}

/// Runs `body` with a connection pool to `configuration`, running meanwhile.
func withPostgresClient<Result: Sendable>(_ configuration: PostgresConfiguration, _ body: (PostgresClient) async throws -> Result) async throws -> Result {
    let client = PostgresClient(configuration: try configuration.clientConfiguration(), backgroundLogger: PostgresServer.logger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await client.run() }
        defer { group.cancelAll() }
        return try await body(client)
    }
}

/// A store opened by the CLI's `StoreFactory` as `serve` opens it (SQLite in the data directory,
/// or PostgreSQL with its migrations applied), held open until `close()`. The factory scopes a
/// store to a closure; a benchmark needs one across several steps. As a node (`withNode`), its id
/// is kept in the data directory, and on PostgreSQL the store knows it and `membership` is its
/// `PostgresCluster`; otherwise `membership` is a single node.
final class OpenedStore: Sendable {
    let store: any SessionStore
    let membership: any ClusterMembership
    private let release: Gate
    private let task: Task<Void, any Error>

    private init(store: any SessionStore, membership: any ClusterMembership, release: Gate, task: Task<Void, any Error>) {
        self.store = store
        self.membership = membership
        self.release = release
        self.task = task
    }

    static func open(_ configuration: ServerConfiguration, asNode: Bool = false, logger: Logger) async throws -> OpenedStore {
        let release = Gate()
        let (opened, continuation) = AsyncStream<(any SessionStore, any ClusterMembership)>.makeStream()
        let task = Task {
            defer { continuation.finish() }
            @Sendable func hold(_ store: any SessionStore, _ membership: any ClusterMembership) async {
                continuation.yield((store, membership))
                await release.wait()
            }
            if asNode {
                try await StoreFactory.withNode(configuration, logger: logger, hold)
            } else {
                try await StoreFactory.withStore(configuration, logger: logger) { store in await hold(store, SingleNode()) }
            }
        }
        for await (store, membership) in opened { return OpenedStore(store: store, membership: membership, release: release, task: task) }
        try await task.value
        throw BenchFailure("the store closed before it was handed out")
    }

    func close() async {
        release.open()
        _ = try? await task.value
    }
}

/// Raw SQL on a measurement's database, beside the product's store: the checks' counts.
enum RawDatabase: Sendable {
    case sqlite(DatabaseQueue)
    case postgres(PostgresClient, Task<Void, Never>)

    /// The database `configuration` names (as `StoreFactory` reads it).
    static func open(_ configuration: ServerConfiguration) throws -> RawDatabase {
        if let url = configuration.databaseURL, url.hasPrefix("postgres") {
            let client = PostgresClient(configuration: try PostgresConfiguration(url: url).clientConfiguration(), backgroundLogger: PostgresServer.logger)
            return .postgres(client, Task { await client.run() })
        }
        guard let path = configuration.sqlitePath else { throw BenchFailure("no SQLite path in the configuration") }
        return .sqlite(try DatabaseQueue(path: path))
    }

    /// The first column of the first row of a `SELECT COUNT(*) …` (the same SQL on both stores).
    func count(_ sql: String) async throws -> Int {
        switch self {
        case .sqlite(let queue):
            return try await queue.read { db in try Int.fetchOne(db, sql: sql) ?? 0 }
        case .postgres(let client, _):
            return try await client.query(PostgresQuery(unsafeSQL: sql), logger: PostgresServer.logger).collect().first?.decode(Int.self) ?? 0
        }
    }

    func close() {
        if case .postgres(_, let task) = self { task.cancel() }
    }
}
