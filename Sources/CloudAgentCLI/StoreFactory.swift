import CloudAgentCore
import CloudAgentPostgres
import CloudAgentSQLite
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Logging

/// Opens the store the configuration names: SQLite (the default, in the data directory) or
/// PostgreSQL (`postgres://…`). The composition of a command's store lives here, in the CLI;
/// the server takes whatever store it is given.
public enum StoreFactory {
    /// A store that could not be opened: the message names the setting.
    public struct Unavailable: Error, CustomStringConvertible {
        public var description: String
    }

    /// How long a PostgreSQL database has to answer at start (migrations included).
    public static let connectTimeout: Duration = .seconds(15)

    /// Runs `body` with the store open. For PostgreSQL its connection pool runs meanwhile, and its
    /// migrations are applied first (several nodes starting at once wait for each other); a bad
    /// URL or a database that does not answer within `connectTimeout` is an error naming
    /// `CLOUD_AGENT_DATABASE_URL`, never its password.
    public static func withStore<Result: Sendable>(
        _ configuration: ServerConfiguration, logger: Logger, connectTimeout: Duration = StoreFactory.connectTimeout,
        _ body: @Sendable (any SessionStore) async throws -> Result
    ) async throws -> Result {
        try await open(configuration, nodeId: nil, logger: logger, connectTimeout: connectTimeout) { store, _ in try await body(store) }
    }

    /// The same for a node that serves: on PostgreSQL its store tells the other nodes of its
    /// changes, and `membership` registers it among them (its id is kept in its data directory);
    /// on SQLite it is a single node.
    public static func withNode<Result: Sendable>(
        _ configuration: ServerConfiguration, logger: Logger, connectTimeout: Duration = StoreFactory.connectTimeout,
        _ body: @Sendable (any SessionStore, any ClusterMembership) async throws -> Result
    ) async throws -> Result {
        let nodeId = try DataDirectory(configuration.dataDirectory).nodeId()
        return try await open(configuration, nodeId: nodeId, logger: logger, connectTimeout: connectTimeout, body)
    }

    private static func open<Result: Sendable>(
        _ configuration: ServerConfiguration, nodeId: String?, logger: Logger, connectTimeout: Duration,
        _ body: @Sendable (any SessionStore, any ClusterMembership) async throws -> Result
    ) async throws -> Result {
        guard let url = configuration.databaseURL, url.hasPrefix("postgres://") || url.hasPrefix("postgresql://") else {
            return try await body(try openSQLite(configuration), SingleNode(nodeId: nodeId ?? "local"))
        }
        let postgres: PostgresConfiguration
        do { postgres = try PostgresConfiguration(url: url) } catch { throw Unavailable(description: "\(error)") }
        let store = try PostgresSessionStore(configuration: postgres, logger: logger, nodeId: nodeId, wakeUpLeaseMs: configuration.nodeLeaseMs)
        let membership: any ClusterMembership =
            nodeId.map {
                PostgresCluster(store: store, configuration: postgres, nodeId: $0, heartbeatMs: configuration.nodeHeartbeatMs, logger: logger)
            } ?? SingleNode()
        return try await withThrowingTaskGroup(of: Result?.self) { group in
            group.addTask {
                await store.run()
                return nil
            }
            defer { group.cancelAll() }
            try await migrate(store, at: postgres, within: connectTimeout)
            return try await body(store, membership)
        }
    }

    /// The migrations, bounded by `connectTimeout`.
    private static func migrate(_ store: PostgresSessionStore, at postgres: PostgresConfiguration, within connectTimeout: Duration) async throws {
        // Whichever comes first: the migrations' outcome or the timeout. A database that never
        // answers leaves its attempt behind (`withDeadline`), which the failing start ends with
        // the process.
        struct TimedOut: Error {}
        let place = "PostgreSQL at \(postgres.host):\(postgres.port), database \(postgres.database)"
        do {
            try await withDeadline(connectTimeout, onTimeout: { TimedOut() }) { try await store.migrate() }
        } catch is TimedOut {
            throw Unavailable(description: "CLOUD_AGENT_DATABASE_URL: \(place) did not answer within \(connectTimeout)")
        } catch {
            throw Unavailable(description: "CLOUD_AGENT_DATABASE_URL: \(place) could not be used: \(Self.describe(error))")
        }
    }

    /// A database error in one line, without the connection's secrets (postgres-nio's errors
    /// carry no password; its descriptions can be long).
    static func describe(_ error: any Error) -> String {
        String(String(describing: error).prefix(300))
    }

    /// The SQLite store in the configured file.
    public static func openSQLite(_ configuration: ServerConfiguration) throws -> any SessionStore {
        guard let path = configuration.sqlitePath else {
            throw Unavailable(description: "CLOUD_AGENT_DATABASE_URL: expected sqlite:PATH or postgres://user:pass@host:port/db")
        }
        try FileManager.default.createDirectory(at: URL(fileURLWithPath: path).deletingLastPathComponent(), withIntermediateDirectories: true)
        return try SQLiteSessionStore(path: path)
    }
}
