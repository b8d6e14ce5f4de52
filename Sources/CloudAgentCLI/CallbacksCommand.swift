import ArgumentParser
import CloudAgentCore
import CloudAgentServer
import Foundation

/// `cloud-agent callbacks key`: the key that signs completion callbacks, for receivers to verify them.
struct CallbacksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "callbacks",
        abstract: "Completion callbacks.",
        subcommands: [Key.self]
    )

    struct Key: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the server's callback signing key (created on first use), alone on one line.",
            discussion: """
                Receivers check X-CloudAgent-Signature: sha256=<hex HMAC-SHA256 of "<X-CloudAgent-Timestamp>.<body>">, \
                keyed with the UTF-8 bytes of this key. Keep it secret.
                """
        )

        @Option(name: .customLong("data-dir"), help: "The service's data directory (CLOUD_AGENT_DATA_DIR, default ./.cloud-agent).") var dataDir: String?
        @Option(name: .customLong("database-url"), help: "sqlite:PATH or postgres://… (CLOUD_AGENT_DATABASE_URL).") var databaseURL: String?

        func run() async throws {
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
            let store = try StoreFactory.open(configuration)
            print(try await store.settingSavingIfAbsent(CallbackSignature.settingKey, value: CallbackSignature.generateKey()))
        }
    }
}
