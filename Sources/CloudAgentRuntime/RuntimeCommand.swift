import CloudAgentJSON
import CloudAgentAgents
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
            return await runScriptedAgent(interactive: false)
        case [scriptedAgentArgument, ScriptedAgentInput.interactiveFlag]:
            return await runScriptedAgent(interactive: true)
        default:
            FileHandle.standardError.write(
                Data(
                    """
                    usage: cloud-agent-runtime                  the session runtime (started by the control plane)
                           cloud-agent-runtime scripted-agent   the built-in scripted agent (prompt on stdin)
                           cloud-agent-runtime scripted-agent --interactive
                                                                the same, the prompt as a JSON line {"prompt": …},
                                                                then the answers to its requests, a JSON line each

                    """.utf8))
            return 64
        }
    }

    private static func runScriptedAgent(interactive: Bool) async -> Int32 {
        let emit = ScriptedAgent.standardOutputEmitter()
        guard interactive else {
            let prompt = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            return await ScriptedAgent(workspace: FileManager.default.currentDirectoryPath, emit: emit).run(prompt: prompt)
        }
        let lines = ScriptedAnswerLines()
        guard let first = await lines.next(), case .object(let object)? = try? JSONDecoder().decode(JSONValue.self, from: Data(first.utf8)),
            let prompt = object["prompt"]?.stringValue
        else {
            FileHandle.standardError.write(Data("scripted-agent: --interactive needs a first line {\"prompt\": …} on stdin\n".utf8))
            return 64
        }
        let agent = ScriptedAgent(
            workspace: FileManager.default.currentDirectoryPath, emit: emit, asker: ScriptedAgent.standardInputAsker(emit: emit, lines: lines))
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
