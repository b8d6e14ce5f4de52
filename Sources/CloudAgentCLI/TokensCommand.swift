import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
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
        @OptionGroup var location: StoreLocationOptions

        func validate() throws {
            guard !user.isEmpty, user.count <= 200, !user.contains(where: \.isNewline) else { throw ValidationError("--user must be 1 to 200 characters") }
            if let org, org.isEmpty || org.count > 200 || org.contains(where: \.isNewline) { throw ValidationError("--org must be 1 to 200 characters") }
        }

        func run() async throws {
            let token = BearerToken.generate()
            let owner = Owner(user: user, org: org)
            try await location.withStore { store in
                try await store.saveToken(hash: BearerToken.hash(token), owner: owner, createdAt: SystemWallClock().now())
            }
            print("Created a token for \(owner). It is shown only now; keep it secret:")
            print(token)
        }
    }
}
