import CloudAgentPostgres
import Foundation
import PostgresNIO

/// The tests' PostgreSQL (the store's, and the server's with several nodes): one
/// `ThrowawayPostgres` per test process, started when the first test asks for a database
/// (`fsync` and full-page writes off: nothing here must survive a crash), one database per test.
/// It is stopped and removed when the process exits.
public actor PostgresTestCluster {
    public static let shared = PostgresTestCluster()

    public typealias Unavailable = ThrowawayPostgres.Unavailable

    private var startup: Task<ThrowawayPostgres, any Error>?

    /// A new, empty database in the shared cluster, and the configuration to reach it.
    public func createDatabase() async throws -> PostgresConfiguration {
        let cluster = try await start()
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await cluster.withAdminConnection { connection in
            _ = try await connection.query("CREATE DATABASE \(unescaped: name)", logger: ThrowawayPostgres.logger).collect()
        }
        return PostgresConfiguration(host: "127.0.0.1", port: cluster.port, username: ThrowawayPostgres.superuser, password: nil, database: name)
    }

    /// Drops a test's database (closing whatever connections are left to it).
    public func dropDatabase(_ name: String) async throws {
        let cluster = try await start()
        try await cluster.withAdminConnection { connection in
            _ = try await connection.query("DROP DATABASE IF EXISTS \(unescaped: name) WITH (FORCE)", logger: ThrowawayPostgres.logger).collect()
        }
    }

    private func start() async throws -> ThrowawayPostgres {
        if let startup { return try await startup.value }
        let task = Task {
            try await ThrowawayPostgres.start(
                settings: ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200"], name: "cloud-agent-pg"
            )
        }
        startup = task
        return try await task.value
    }
}
