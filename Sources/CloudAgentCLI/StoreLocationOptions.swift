import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Logging

/// `--data-dir` / `--database-url` of the commands that work on the store directly
/// (`tokens create`, `callbacks key`), with the same environment fallbacks as `serve`.
struct StoreLocationOptions: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: "The service's data directory (CLOUD_AGENT_DATA_DIR, default ./.cloud-agent).") var dataDir: String?
    @Option(name: .customLong("database-url"), help: "sqlite:PATH or postgres://… (CLOUD_AGENT_DATABASE_URL).") var databaseURL: String?

    /// Runs `body` with the store the options (or the environment) name: SQLite, or PostgreSQL
    /// with its pool running and its migrations applied.
    func withStore<Result: Sendable>(_ body: @Sendable (any SessionStore) async throws -> Result) async throws -> Result {
        var flags: [String: String] = [:]
        flags["dataDir"] = dataDir
        flags["databaseURL"] = databaseURL
        let configuration: ServerConfiguration
        do {
            configuration = try ServerConfiguration.resolve(flags: flags, environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError(error.description)
        }
        _ = try DataDirectory(configuration.dataDirectory)
        var logger = Logger(label: "cloud-agent")
        logger.logLevel = .warning
        return try await StoreFactory.withStore(configuration, logger: logger, body)
    }
}
