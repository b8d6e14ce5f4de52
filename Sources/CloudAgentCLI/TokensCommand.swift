import ArgumentParser
import CloudAgentCore
import CloudAgentServer
import Foundation

/// `cloud-agent tokens create --user U [--org O]`: a new bearer token, stored hashed.
struct TokensCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens",
        abstract: "Manage API tokens.",
        subcommands: [Create.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a bearer token for a user (printed alone on the last line; only its hash is stored)."
        )

        @Option(help: "The user the token acts as.") var user: String
        @Option(help: "The user's org (sessions belong to user + org).") var org: String?
        @Option(name: .customLong("data-dir"), help: "The service's data directory (CLOUD_AGENT_DATA_DIR, default ./.cloud-agent).") var dataDir: String?
        @Option(name: .customLong("database-url"), help: "sqlite:PATH or postgres://… (CLOUD_AGENT_DATABASE_URL).") var databaseURL: String?

        func validate() throws {
            guard !user.isEmpty, user.count <= 200, !user.contains(where: \.isNewline) else { throw ValidationError("--user must be 1 to 200 characters") }
            if let org, org.isEmpty || org.count > 200 || org.contains(where: \.isNewline) { throw ValidationError("--org must be 1 to 200 characters") }
        }

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
            let token = BearerToken.generate()
            let owner = Owner(user: user, org: org)
            try await store.saveToken(hash: BearerToken.hash(token), owner: owner, createdAt: SystemWallClock().now())
            print("Created a token for \(owner). It is shown only now; keep it secret:")
            print(token)
        }
    }
}
