import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// `cloud-agent-runtime` (the runtime) and `cloud-agent-runtime scripted-agent` (the built-in
/// scripted agent).
public enum RuntimeCommand {
    public static let scriptedAgentArgument = "scripted-agent"

    /// Runs what the arguments ask for; returns the process's exit code.
    public static func main(arguments: [String]) async -> Int32 {
        switch Array(arguments.dropFirst()) {
        case []:
            return await runRuntime()
        case [scriptedAgentArgument]:
            return await runScriptedAgent()
        default:
            FileHandle.standardError.write(
                Data(
                    """
                    usage: cloud-agent-runtime                  the session runtime (started by the control plane)
                           cloud-agent-runtime scripted-agent   the built-in scripted agent (prompt on stdin)

                    """.utf8))
            return 64
        }
    }

    private static func runScriptedAgent() async -> Int32 {
        let prompt = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        let agent = ScriptedAgent(workspace: FileManager.default.currentDirectoryPath, emit: ScriptedAgent.standardOutputEmitter())
        return await agent.run(prompt: prompt)
    }

    private static func runRuntime() async -> Int32 {
        // A write to a closed pipe (an agent gone before reading its prompt) must fail, not kill us.
        signal(SIGPIPE, SIG_IGN)
        let environment = ProcessInfo.processInfo.environment
        let configuration: RuntimeConfiguration
        do {
            configuration = try RuntimeConfiguration(environment: environment, currentDirectory: FileManager.default.currentDirectoryPath)
        } catch {
            FileHandle.standardError.write(Data("cloud-agent-runtime: \(error)\n".utf8))
            return 2
        }
        guard let secret = readLine(strippingNewline: true)?.trimmingCharacters(in: .whitespaces), !secret.isEmpty else {
            FileHandle.standardError.write(Data("cloud-agent-runtime: the runtime's secret must be the first line of stdin\n".utf8))
            return 2
        }
        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "cloud-agent-runtime")
        logger[metadataKey: "sessionId"] = .string(configuration.sessionId)
        logger[metadataKey: "runtimeId"] = .string(configuration.runtimeId)

        let runtime = AgentRuntime(
            configuration: configuration,
            agents: AgentCatalog(runtimeExecutable: AgentCatalog.currentExecutablePath()),
            agentEnvironment: RuntimeConfiguration.agentEnvironment(from: environment),
            logger: logger
        )
        let connection = ControlConnection(runtime: runtime, secret: RuntimeSecret(secret), logger: logger)
        // Shut down in reverse order: the runtime reports its execution interrupted while the
        // connection is still up, then the connection closes.
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: connection),
                    .init(service: runtime, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm],
                logger: logger
            ))
        do {
            try await group.run()
        } catch {
            logger.error("runtime failed", metadata: ["error": "\(error)"])
            return 1
        }
        return 0
    }
}
