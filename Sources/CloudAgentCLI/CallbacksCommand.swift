import ArgumentParser
import CloudAgentCore
import CloudAgentEngine
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

        @OptionGroup var location: StoreLocationOptions

        func run() async throws {
            print(
                try await location.withStore { store in
                    try await store.settingSavingIfAbsent(CallbackSignature.settingKey, value: CallbackSignature.generateKey())
                })
        }
    }
}
