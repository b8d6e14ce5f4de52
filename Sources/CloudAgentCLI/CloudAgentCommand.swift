import ArgumentParser

/// `cloud-agent`: the control plane and its client.
public struct CloudAgentCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cloud-agent",
        abstract: "Runs AI coding agents in sandboxed workspaces, and never stops a runtime while its agent works.",
        subcommands: [ServeCommand.self, TokensCommand.self]
    )

    public init() {}
}

extension CloudAgentCommand {
    /// Parses the process's arguments and runs the command (the executable's whole `main`).
    public static func runFromCommandLine() async {
        await main()
    }
}
