import ArgumentParser
import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// `cloud-agent`: the control plane and its client.
public struct CloudAgentCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cloud-agent",
        abstract: "Runs AI coding agents in sandboxed workspaces, and never stops a runtime while its agent works.",
        discussion: """
            Client commands find the server with --url (CLOUD_AGENT_URL, default \
            http://127.0.0.1:8787) and authenticate with --token (CLOUD_AGENT_TOKEN, else the \
            api-token file of --data-dir / CLOUD_AGENT_DATA_DIR / ./.cloud-agent). --json prints \
            raw JSON, one object per line. Colours only on a terminal and without NO_COLOR. \
            \(ExitStatus.summary)
            """,
        subcommands: [
            ServeCommand.self, TokensCommand.self, SessionsCommand.self, RunCommand.self, SendCommand.self, StreamCommand.self,
            InterruptCommand.self, AnswerCommand.self, ExecutionsCommand.self, EventsCommand.self, AgentsCommand.self, DemoCommand.self, CallbacksCommand.self,
            LogsCommand.self,
        ]
    )

    public init() {}
}

extension CloudAgentCommand {
    /// Parses the process's arguments and runs the command (the executable's whole `main`).
    /// Client failures print their message (the API's `error.message` and code) to stderr and
    /// exit with their code; usage errors exit 2 (see `ExitStatus`).
    public static func runFromCommandLine() async {
        let code: Int32
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            code = ExitStatus.success
        } catch let failure as CLIFailure {
            Console.shared.error("error: " + failure.description)
            code = failure.exitCode
        } catch {
            let exitCode = exitCode(for: error)
            let message = fullMessage(for: error)
            if !message.isEmpty {
                if exitCode == .success { Console.shared.line(message) } else { Console.shared.error(message) }
            }
            code = exitCode == .validationFailure ? ExitStatus.usage : exitCode.rawValue
        }
        terminate(code)
    }
}

/// `exit(3)`, named apart from ArgumentParser's `exit(withError:)`.
private func terminate(_ code: Int32) -> Never {
    exit(code)
}
