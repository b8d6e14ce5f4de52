import CloudAgentTestSupport
import CloudAgentCLI
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import Logging
import Testing

/// How a command opens its store: SQLite by default, PostgreSQL from a `postgres://` URL, and a
/// clear error naming the setting (never the password) when PostgreSQL cannot be used.
@Suite("Opening the store", .processes)
struct StoreFactoryTests {
    /// The pool logs each refused connection at info; these tests expect them.
    static let quiet: Logger = {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }()

    static func configuration(_ databaseURL: String?) throws -> ServerConfiguration {
        var flags = ["dataDir": FileManager.default.temporaryDirectory.appendingPathComponent("store-factory-\(UUID().uuidString)").path]
        flags["databaseURL"] = databaseURL
        return try ServerConfiguration.resolve(flags: flags, environment: [:])
    }

    @Test("no setting: SQLite in the data directory")
    func sqliteByDefault() async throws {
        let configuration = try Self.configuration(nil)
        defer { try? FileManager.default.removeItem(at: configuration.dataDirectory) }
        let found = try await StoreFactory.withStore(configuration, logger: Self.quiet) { store in
            try await store.settingSavingIfAbsent("k", value: "v")
        }
        #expect(found == "v")
        #expect(FileManager.default.fileExists(atPath: configuration.dataDirectory.appendingPathComponent("cloud-agent.sqlite").path))
    }

    @Test("a malformed postgres URL is an error naming the setting, not the password")
    func malformedURL() async throws {
        let configuration = try Self.configuration("postgres://admin:s3cret@/agents")
        do {
            _ = try await StoreFactory.withStore(configuration, logger: Self.quiet) { _ in true }
            Issue.record("a URL without a host was accepted")
        } catch {
            #expect("\(error)".hasPrefix("CLOUD_AGENT_DATABASE_URL"), "\(error)")
            #expect(!"\(error)".contains("s3cret"))
        }
    }

    @Test("a database that does not answer stops the start within the bound, naming the setting, not the password")
    func unreachableDatabase() async throws {
        let configuration = try Self.configuration("postgres://admin:s3cret@127.0.0.1:1/agents")
        let started = ContinuousClock.now
        do {
            _ = try await StoreFactory.withStore(configuration, logger: Self.quiet, connectTimeout: .seconds(3)) { _ in true }
            Issue.record("an unreachable database was accepted")
        } catch {
            #expect("\(error)".hasPrefix("CLOUD_AGENT_DATABASE_URL: PostgreSQL at 127.0.0.1:1, database agents"), "\(error)")
            #expect(!"\(error)".contains("s3cret"))
        }
        #expect(ContinuousClock.now - started < .seconds(10))
    }
}
