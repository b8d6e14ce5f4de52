import CloudAgentProtocol
import Foundation
import Subprocess
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How to start an agent: its program and arguments.
public struct AgentCommand: Sendable, Equatable {
    public var executable: String
    public var arguments: [String]

    public init(executable: String, arguments: [String]) {
        self.executable = executable
        self.arguments = arguments
    }
}

/// The agents this runtime can run, by name.
public struct AgentCatalog: Sendable {
    /// This executable, which is also the built-in `scripted` agent (`scripted-agent`).
    public var runtimeExecutable: String

    public init(runtimeExecutable: String) {
        self.runtimeExecutable = runtimeExecutable
    }

    /// The command for `command.agent`, or nil for an agent this runtime does not know.
    public func agentCommand(for command: ExecuteCommand) -> AgentCommand? {
        switch command.agent {
        case "scripted": AgentCommand(executable: runtimeExecutable, arguments: [RuntimeCommand.scriptedAgentArgument])
        default: nil
        }
    }

    /// The path of the running executable (`/proc/self/exe` on Linux).
    public static func currentExecutablePath() -> String {
        #if os(Linux)
        if let resolved = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return resolved }
        #endif
        return Bundle.main.executablePath ?? CommandLine.arguments[0]
    }
}

/// Which of the agent's output streams a line came from.
public enum AgentStream: String, Sendable {
    case stdout, stderr
}

/// How an agent process ended.
public enum AgentTermination: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)
}

/// Signals to a whole process group.
public enum ProcessGroup {
    /// `kill(-group, signal)`; a group that is already gone is not an error.
    public static func signal(_ group: pid_t, _ signal: Int32) {
        guard group > 1 else { return }
        _ = kill(-group, signal)
    }

    /// A readable name: `SIGKILL` for 9.
    public static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGHUP: "SIGHUP"
        case SIGINT: "SIGINT"
        case SIGQUIT: "SIGQUIT"
        case SIGILL: "SIGILL"
        case SIGABRT: "SIGABRT"
        case SIGFPE: "SIGFPE"
        case SIGKILL: "SIGKILL"
        case SIGSEGV: "SIGSEGV"
        case SIGPIPE: "SIGPIPE"
        case SIGALRM: "SIGALRM"
        case SIGTERM: "SIGTERM"
        case SIGUSR1: "SIGUSR1"
        case SIGUSR2: "SIGUSR2"
        case SIGBUS: "SIGBUS"
        case SIGTRAP: "SIGTRAP"
        default: "signal \(signal)"
        }
    }
}

/// Runs one agent: a child process in its own process group, in the workspace, with the prompt
/// on its stdin (then closed), its stdout and stderr read line by line.
///
/// A stop request (a grace period) sends SIGTERM to the agent's group, then SIGKILL once the
/// grace has passed. When the agent itself has exited, whatever is left of its group (a
/// background job it started) is killed: nothing an execution started outlives it.
struct AgentProcess {
    var command: AgentCommand
    var prompt: String
    var workingDirectory: String
    var environment: [String: String]

    /// Returns once the agent has exited and every line of its output has been delivered.
    func run(
        stopRequests: AsyncStream<Duration>,
        onStart: @escaping @Sendable (pid_t) async -> Void,
        onLine: @escaping @Sendable (AgentStream, String) async -> Void
    ) async throws -> AgentTermination {
        var options = PlatformOptions()
        options.processGroupID = 0
        // If this task is cancelled while the agent runs, swift-subprocess tears it down.
        options.teardownSequence = [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: .seconds(1))]
        let variables = Dictionary(
            environment.compactMap { name, value in Environment.Key(rawValue: name).map { ($0, value) } },
            uniquingKeysWith: { first, _ in first }
        )
        let result = try await Subprocess.run(
            .path(FilePath(command.executable)),
            arguments: Arguments(command.arguments),
            environment: .custom(variables),
            workingDirectory: FilePath(workingDirectory),
            platformOptions: options,
            input: .inputWriter,
            output: .sequence,
            error: .sequence
        ) { execution in
            let pid = execution.processIdentifier.value
            await onStart(pid)
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    await withTaskGroup(of: Void.self) { killers in
                        for await grace in stopRequests {
                            ProcessGroup.signal(pid, SIGTERM)
                            killers.addTask {
                                try? await Task.sleep(for: grace)
                                ProcessGroup.signal(pid, SIGKILL)
                            }
                        }
                        killers.cancelAll()
                    }
                }
                await withTaskGroup(of: Void.self) { io in
                    io.addTask {
                        // The agent may exit without reading its prompt: a failed write is fine.
                        let writer = execution.standardInputWriter
                        _ = try? await writer.write(prompt)
                        try? await writer.finish()
                    }
                    io.addTask { await Self.forwardLines(of: execution.standardOutput, as: .stdout, to: onLine) }
                    io.addTask { await Self.forwardLines(of: execution.standardError, as: .stderr, to: onLine) }
                }
                await Self.waitUntilExited(pid)
                group.cancelAll()
            }
            // The agent has exited but is not reaped yet, so its group id cannot be reused.
            ProcessGroup.signal(pid, SIGKILL)
        }
        switch result.terminationStatus {
        case .exited(let code): return .exited(code)
        case .signaled(let signal): return .signaled(signal)
        }
    }

    private static func forwardLines(
        of output: SubprocessOutputSequence,
        as stream: AgentStream,
        to onLine: @Sendable (AgentStream, String) async -> Void
    ) async {
        var splitter = LineSplitter()
        do {
            for try await buffer in output {
                for line in splitter.append(buffer.withUnsafeBytes { Array($0) }) {
                    await onLine(stream, line)
                }
            }
        } catch {
            // A read error ends this stream like EOF; the exit status still tells how it ended.
        }
        if let last = splitter.finish() { await onLine(stream, last) }
    }

    /// Waits until `pid` (a child of this process) has exited, without reaping it.
    private static func waitUntilExited(_ pid: pid_t) async {
        var delay = Duration.milliseconds(1)
        // Cancelled: swift-subprocess's teardown stops the agent; do not spin until it has.
        while !hasExited(pid), !Task.isCancelled {
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .milliseconds(50))
        }
    }

    private static func hasExited(_ pid: pid_t) -> Bool {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == -1 {
            // ECHILD: it is no longer our child to wait for, so it is gone.
            if errno != EINTR { return true }
        }
        return info.si_signo != 0
    }
}
